//! Our writer and our reader agree exactly, for every value type and several tensor types.

mod common;

use qsparse::gguf::{GgmlType, GgufError, GgufFile, GgufWriter, MetaValue, TypeDialect, ValueType};

/// Exact equality, with floats compared by bits (so -0.0 and 0.0 differ, as in the file).
fn same(a: &MetaValue, b: &MetaValue) -> bool {
    match (a, b) {
        (MetaValue::F32(x), MetaValue::F32(y)) => x.to_bits() == y.to_bits(),
        (MetaValue::F64(x), MetaValue::F64(y)) => x.to_bits() == y.to_bits(),
        (MetaValue::Array(ta, xa), MetaValue::Array(tb, xb)) => {
            ta == tb && xa.len() == xb.len() && xa.iter().zip(xb).all(|(x, y)| same(x, y))
        }
        _ => a == b,
    }
}

#[test]
fn every_value_type_and_tensor_round_trips_through_a_file() {
    for (version, alignment) in [(3, 32), (3, 64), (2, 32), (3, 4096)] {
        let (w, data) = common::sample_writer();
        let w = w.with_version(version).with_alignment(alignment).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rt.gguf");
        let written = w
            .write_file(&path, |i, _, out| out.write_all(&data[i]))
            .unwrap();
        assert_eq!(written, std::fs::metadata(&path).unwrap().len());

        let f = GgufFile::open(&path).unwrap();
        assert_eq!(f.version(), version);
        assert_eq!(f.alignment(), alignment);
        let expected = common::every_value_type();
        for (k, v) in &expected {
            let got = f
                .get(k)
                .unwrap_or_else(|| panic!("key {k} missing"))
                .to_owned_value();
            assert!(same(&got, v), "{k}: wrote {v:?}, read {got:?}");
        }
        // Nothing extra but the architecture and (for non-default alignment) general.alignment.
        let extra = 1 + usize::from(alignment != 32);
        assert_eq!(f.kv_count(), expected.len() + extra);
        // Keys come back in file order.
        let keys: Vec<&str> = f
            .metadata()
            .map(|(k, _)| k)
            .skip(1)
            .take(expected.len())
            .collect();
        let want: Vec<&str> = expected.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, want);

        let tensors = common::sample_tensors();
        assert_eq!(f.tensors().len(), tensors.len());
        for ((name, ty, dims, bytes), info) in tensors.iter().zip(f.tensors()) {
            assert_eq!(&info.name, name);
            assert_eq!(info.ty, *ty);
            assert_eq!(&info.dims, dims);
            assert_eq!(info.file_offset % alignment, 0, "{name} misaligned");
            assert_eq!(f.tensor_data(info), bytes.as_slice(), "{name} data");
        }
    }
}

#[test]
fn borrowed_string_arrays_iterate_in_place() {
    let f = GgufFile::from_bytes(common::sample_image()).unwrap();
    let arr = f.get_array("t.arr.string").unwrap();
    let strings: Vec<&str> = arr.strings().unwrap().collect();
    assert_eq!(strings, ["<|im_start|>", "", "Ġthe", "日本語", "🙂"]);
    assert!(f.get_array("t.arr.u32").unwrap().strings().is_none());
}

#[test]
fn typed_getters_name_the_key() {
    let f = GgufFile::from_bytes(common::sample_image()).unwrap();
    assert_eq!(f.get_u64("t.u32").unwrap(), u64::from(u32::MAX));
    assert_eq!(f.get_u64("t.u8").unwrap(), 255);
    assert!(matches!(
        f.get_u64("t.i64"),
        Err(GgufError::WrongType { .. })
    ));
    let e = f.get_str("no.such.key").unwrap_err().to_string();
    assert!(e.contains("no.such.key"), "{e}");
    let e = f.get_f32("t.string").unwrap_err().to_string();
    assert!(e.contains("t.string") && e.contains("string"), "{e}");
}

#[test]
fn bitnet_types_keep_bitnet_ids() {
    let mut w = GgufWriter::new().with_dialect(TypeDialect::BitnetCpp);
    w.add_kv("general.architecture", "bitnet-b1.58");
    w.add_tensor("w", GgmlType::I2_S, &[256, 4]);
    w.add_tensor("x", GgmlType::TL2, &[512, 2]);
    let sizes: Vec<u64> = w.tensors().iter().map(|t| t.n_bytes().unwrap()).collect();
    let mut img = Vec::new();
    w.write_to(&mut img, |i, _, o| {
        o.write_all(&vec![7u8; sizes[i] as usize])
    })
    .unwrap();
    let f = GgufFile::from_bytes(img).unwrap();
    assert_eq!(f.dialect(), TypeDialect::BitnetCpp);
    assert_eq!(f.tensors()[0].raw_type_id, 36);
    assert_eq!(f.tensors()[0].ty, GgmlType::I2_S);
    assert_eq!(f.tensors()[0].n_bytes, 256 * 4 / 4 + 32);
    assert_eq!(f.tensors()[1].raw_type_id, 39);
    assert_eq!(f.tensors()[1].ty, GgmlType::TL2);
}

#[test]
fn writer_refuses_bad_input_and_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.gguf");

    let mut w = GgufWriter::new();
    w.add_kv("k", 1u32).add_kv("k", 2u32);
    assert!(w.write_file(&path, |_, _, _| Ok(())).is_err());

    let mut w = GgufWriter::new();
    w.add_kv(
        "mixed",
        MetaValue::Array(ValueType::U32, vec![MetaValue::U32(1), MetaValue::U8(2)]),
    );
    assert!(w.write_file(&path, |_, _, _| Ok(())).is_err());

    // A data callback that writes too few bytes fails the whole write.
    let mut w = GgufWriter::new();
    w.add_tensor("t", GgmlType::F32, &[4]);
    let err = w
        .write_file(&path, |_, _, o| o.write_all(&[0u8; 8]))
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("8 bytes of data written, 16 expected"),
        "{err}"
    );

    // An I/O error from the callback, too.
    let err = w
        .write_file(&path, |_, _, _| Err(std::io::Error::other("disk on fire")))
        .unwrap_err();
    assert!(err.to_string().contains("disk on fire"), "{err}");

    let mut w = GgufWriter::new();
    w.add_tensor("q", GgmlType::Q4_K, &[100]);
    assert!(w.write_file(&path, |_, _, _| Ok(())).is_err());

    assert!(GgufWriter::new().with_alignment(48).is_err());
    assert!(!path.exists(), "a failed write left {path:?} behind");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(
        leftovers.is_empty(),
        "temp files left behind: {leftovers:?}"
    );
}
