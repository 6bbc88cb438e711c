use super::*;
use proptest::collection::vec;
use proptest::prelude::*;

fn ts() -> impl Strategy<Value = Timestamp> {
    (any::<i64>(), 0u32..1_000_000_000).prop_map(|(sec, nsec)| Timestamp { sec, nsec })
}

fn extents(max: usize) -> impl Strategy<Value = Vec<Extent>> {
    vec((0u64..1000, 1u64..1 << 40, 1u32..10_000), 0..max).prop_map(|v| {
        let mut logical = 0;
        v.into_iter()
            .map(|(gap, physical, len)| {
                let e = Extent { logical: logical + gap, physical, len };
                logical = e.end();
                e
            })
            .collect()
    })
}

fn content() -> impl Strategy<Value = (u8, Content)> {
    prop_oneof![
        extents(INLINE_EXTENTS_MAX).prop_map(|e| (0, Content::Extents(e))),
        vec((1u64..1000, 1u64..u64::MAX), 1..INLINE_INDEX_MAX).prop_map(|v| {
            let mut l = 0;
            let idx = v
                .into_iter()
                .map(|(gap, leaf)| {
                    l += gap;
                    ExtentIndex { logical: l, leaf }
                })
                .collect();
            (0, Content::Index(idx))
        }),
        vec(any::<u8>(), 0..MAX_SYMLINK_LEN).prop_map(|v| (0, Content::Inline(v))),
        (0u8..=INLINE_DIR_DEPTH)
            .prop_flat_map(|d| vec(1u64..u64::MAX, 1usize << d).prop_map(move |v| (d, Content::DirHash(v)))),
    ]
}

fn dinode() -> impl Strategy<Value = Dinode> {
    (
        (any::<u32>(), any::<u32>(), any::<u32>(), any::<u32>(), any::<u64>(), any::<u64>()),
        (ts(), ts(), ts(), any::<u32>(), any::<u64>(), any::<u64>(), any::<u32>()),
        (any::<u64>(), any::<u64>(), content()),
    )
        .prop_map(|(a, b, (xattr_block, dir_entries, (dir_depth, content)))| Dinode {
            mode: a.0,
            uid: a.1,
            gid: a.2,
            nlink: a.3,
            size: a.4,
            blocks: a.5,
            atime: b.0,
            mtime: b.1,
            ctime: b.2,
            rdev: b.3,
            generation: b.4,
            parent: b.5,
            flags: b.6,
            dir_depth,
            xattr_block,
            dir_entries,
            content,
        })
}

fn name() -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>().prop_filter("no / or NUL", |c| *c != b'/' && *c != 0), 1..=MAX_NAME_LEN)
}

fn leaf() -> impl Strategy<Value = DirLeaf> {
    (any::<u64>(), any::<u64>(), vec((any::<u64>(), any::<u8>(), name()), 0..40)).prop_map(|(owner, next, v)| {
        let mut entries = Vec::new();
        let mut used = 0;
        for (inum, dtype, name) in v {
            let e = DirEntry { inum, hash: name_hash(&name), dtype, name };
            if used + e.space() > DIR_LEAF_SPACE {
                break;
            }
            used += e.space();
            entries.push(e);
        }
        DirLeaf { owner, depth: 0, prefix: 0, next, entries }
    })
}

fn superblock() -> impl Strategy<Value = Superblock> {
    (
        any::<[u8; 16]>(),
        any::<bool>(),
        "[a-z0-9_]{1,16}:[a-z0-9_]{1,16}",
        1u32..JINDEX_MAX as u32,
        3u32..100_000,
        1u32..100,
    )
        .prop_map(|(uuid, dlm, locktable, journal_count, rg_blocks, rg_count)| Superblock {
            block_size: BLOCK_SIZE as u32,
            block_count: 100 + rg_blocks as u64 * rg_count as u64,
            uuid,
            lockproto: if dlm { LockProto::Dlm } else { LockProto::Nolock },
            locktable,
            root_dinode: 40,
            jindex_block: 17,
            master_statfs: 18,
            rg_start: 50,
            rg_blocks,
            rg_count,
            journal_count,
        })
}

/// A sample of block types, encoded at `blkno`.
fn any_block() -> impl Strategy<Value = (u64, Box<Block>)> {
    let blocks = prop_oneof![
        dinode().prop_map(MetaBlock::Dinode),
        leaf().prop_map(MetaBlock::DirLeaf),
        extents(EXTENT_LEAF_MAX)
            .prop_filter("non-empty", |e| !e.is_empty())
            .prop_map(|extents| MetaBlock::ExtentLeaf(ExtentLeaf { owner: 99, extents })),
        (any::<u64>(), any::<bool>(), vec(any::<u64>(), 1..LOG_DESCRIPTOR_MAX))
            .prop_map(|(sequence, more, homes)| MetaBlock::LogDescriptor(LogDescriptor { sequence, more, homes })),
    ];
    (17u64..1 << 40, blocks).prop_map(|(b, m)| (b, m.encode(b)))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn dinode_roundtrip(d in dinode(), blkno in 17u64..u64::MAX) {
        prop_assert_eq!(Dinode::decode(&d.encode(blkno)[..], blkno).unwrap(), d);
    }

    #[test]
    fn leaf_roundtrip(l in leaf(), blkno in 17u64..u64::MAX) {
        prop_assert_eq!(DirLeaf::decode(&l.encode(blkno)[..], blkno).unwrap(), l);
    }

    #[test]
    fn superblock_roundtrip(sb in superblock()) {
        prop_assert_eq!(Superblock::decode(&sb.encode()[..]).unwrap(), sb);
    }

    #[test]
    fn small_blocks_roundtrip(
        blkno in 17u64..u64::MAX,
        free in any::<i64>(), dinodes in any::<i64>(), slot in any::<u32>(),
        journals in vec((1u64..u64::MAX, 8u32..u32::MAX, 1u64..u64::MAX), 1..JINDEX_MAX),
        seq in any::<u64>(), crc in any::<u32>(), nblocks in any::<u32>(),
        ptrs in vec(1u64..u64::MAX, 1..DIR_TABLE_PTRS),
        attrs in vec((vec(any::<u8>(), 1..40), vec(any::<u8>(), 0..200)), 0..10),
        bits in vec(any::<u8>(), BITMAP_BYTES),
    ) {
        let s = Statfs { slot, total: 5, free, dinodes };
        prop_assert_eq!(Statfs::decode(&s.encode(blkno)[..], blkno).unwrap(), s);
        let j = JIndex { journals: journals.into_iter().map(|(start, blocks, statfs_block)| JournalEntry { start, blocks, statfs_block }).collect() };
        prop_assert_eq!(JIndex::decode(&j.encode(blkno)[..], blkno).unwrap(), j);
        let h = JournalHeader { slot, sequence: seq, clean: crc % 2 == 0 };
        prop_assert_eq!(JournalHeader::decode(&h.encode(blkno)[..], blkno).unwrap(), h);
        let c = LogCommit { sequence: seq, blocks: nblocks, crc };
        prop_assert_eq!(LogCommit::decode(&c.encode(blkno)[..], blkno).unwrap(), c);
        let t = DirTable { owner: seq, index: slot, ptrs };
        prop_assert_eq!(DirTable::decode(&t.encode(blkno)[..], blkno).unwrap(), t);
        let x = XattrBlock { owner: seq, attrs: attrs.into_iter().map(|(name, value)| Xattr { name, value }).collect() };
        prop_assert_eq!(XattrBlock::decode(&x.encode(blkno)[..], blkno).unwrap(), x);
        let mut bm = Bitmap::new(slot, 3);
        bm.bits.copy_from_slice(&bits);
        prop_assert_eq!(Bitmap::decode(&bm.encode(blkno)[..], blkno).unwrap(), bm);
    }

    /// Any flipped bit anywhere in any block is detected.
    #[test]
    fn corruption_detected((blkno, block) in any_block(), bit in 0usize..BLOCK_SIZE * 8) {
        prop_assert!(MetaBlock::decode(&block[..], blkno).is_ok());
        let mut bad = block.clone();
        bad[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(MetaBlock::decode(&bad[..], blkno).is_err());
    }

    /// A block read from the wrong address is detected.
    #[test]
    fn misdirected_detected((blkno, block) in any_block(), delta in 1u64..1000) {
        let err = MetaBlock::decode(&block[..], blkno + delta).unwrap_err();
        prop_assert!(matches!(err, FormatError::WrongAddress { .. }), "{:?}", err);
    }

    /// Decoding arbitrary bytes (with a valid checksum, so the body parsers run) never panics.
    #[test]
    fn garbage_never_panics(body in vec(any::<u8>(), BLOCK_SIZE), t in 0u16..16, blkno in 0u64..100) {
        let mut b: Block = body.try_into().unwrap();
        Header::write(&mut b, BlockType::Dinode, blkno);
        put_u16(&mut b, 4, t);
        Header::seal(&mut b);
        let _ = MetaBlock::decode(&b, blkno);
    }
}

#[test]
fn bitmap_find_free() {
    let mut bm = Bitmap::new(0, 0);
    for i in 0..100 {
        bm.set(i, BlockState::Data);
    }
    bm.set(50, BlockState::Free);
    assert_eq!(bm.find_free(0, 1000), Some(50));
    assert_eq!(bm.find_free(51, 1000), Some(100));
    assert_eq!(bm.find_free(51, 100), None);
    bm.set(7, BlockState::Dinode);
    assert_eq!(bm.get(7), BlockState::Dinode);
    assert_eq!(bm.get(6), BlockState::Data);
}

#[test]
fn rgrp_layout_fits() {
    for len in [3u64, 10, 16257, 16258, 16259, 65536, 100_000] {
        let r = Rgrp::layout(0, 1000, len).unwrap();
        assert!(1 + r.bitmap_blocks as u64 + r.data_count as u64 <= len);
        assert_eq!(r.bitmap_blocks as u64, Rgrp::bitmaps_for(r.data_count as u64));
        assert_eq!(Rgrp::decode(&r.encode(1000)[..], 1000).unwrap(), r);
    }
    assert!(Rgrp::layout(0, 0, 2).is_none());
}
