//! IDX reading on generated files: raw and gzipped, and every kind of broken file.

use std::path::Path;

use ddpm_data::idx::{encode_images, encode_labels, gzip, read_images, read_labels, IdxImages};
use ddpm_data::{DataError, IdxDataset, Split};

fn sample_images(count: usize) -> IdxImages {
    IdxImages {
        count,
        rows: 3,
        cols: 2,
        pixels: (0..count * 6).map(|i| (i * 37 % 256) as u8).collect(),
    }
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn raw_and_gzipped_files_read_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let images = sample_images(5);
    let raw = write(dir.path(), "raw-images", &encode_images(&images));
    let gz = write(dir.path(), "gz-images.gz", &gzip(&encode_images(&images)));
    assert_eq!(read_images(&raw).unwrap(), images);
    assert_eq!(read_images(&gz).unwrap(), images);
    let labels = vec![3u8, 1, 4, 1, 5];
    let path = write(dir.path(), "labels.gz", &gzip(&encode_labels(&labels)));
    assert_eq!(read_labels(&path).unwrap(), labels);
}

#[test]
fn broken_files_give_typed_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let good = encode_images(&sample_images(4));

    let truncated = write(dir.path(), "truncated", &good[..good.len() - 3]);
    let err = read_images(&truncated).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::Truncated {
                expected: 24,
                found: 21,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("truncated"), "{err}");
    assert!(
        err.to_string().contains(&truncated.display().to_string()),
        "{err}"
    );

    let header_only = write(dir.path(), "header-only", &good[..10]);
    assert!(matches!(
        read_images(&header_only).unwrap_err(),
        DataError::Truncated { .. }
    ));

    let labels_as_images = write(dir.path(), "labels-not-images", &encode_labels(&[1, 2]));
    let err = read_images(&labels_as_images).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::BadMagic {
                found: 0x801,
                expected: 0x803,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("labels-not-images"), "{err}");

    let mut extra = good.clone();
    extra.push(0);
    let too_long = write(dir.path(), "too-long", &extra);
    assert!(matches!(
        read_images(&too_long).unwrap_err(),
        DataError::BadDimensions { .. }
    ));

    let gz = gzip(&good);
    let bad_gz = write(dir.path(), "cut.gz", &gz[..gz.len() / 2]);
    let err = read_images(&bad_gz).unwrap_err();
    assert!(matches!(err, DataError::CorruptGzip { .. }), "{err:?}");
    assert!(err.to_string().contains("cut.gz"), "{err}");

    let err = read_images(dir.path().join("missing")).unwrap_err();
    assert!(
        matches!(err, DataError::Io { .. }) && err.to_string().contains("missing"),
        "{err}"
    );
}

#[test]
fn a_dataset_directory_is_checked_for_agreement() {
    let dir = tempfile::tempdir().unwrap();
    let (images_name, labels_name) = IdxDataset::FashionMnist.file_names(Split::Test);
    write(
        dir.path(),
        images_name,
        &gzip(&encode_images(&sample_images(4))),
    );
    // Uncompressed labels are found under the name without `.gz`.
    write(
        dir.path(),
        labels_name.trim_end_matches(".gz"),
        &encode_labels(&[0, 1, 2]),
    );
    let err = IdxDataset::FashionMnist
        .load(dir.path(), Split::Test, false)
        .unwrap_err();
    assert!(
        matches!(
            err,
            DataError::CountMismatch {
                images: 4,
                labels: 3,
                ..
            }
        ),
        "{err:?}"
    );

    write(
        dir.path(),
        labels_name.trim_end_matches(".gz"),
        &encode_labels(&[0, 1, 12, 2]),
    );
    let err = IdxDataset::FashionMnist
        .load(dir.path(), Split::Test, false)
        .unwrap_err();
    assert!(
        matches!(
            err,
            DataError::BadLabel {
                index: 2,
                value: 12,
                ..
            }
        ),
        "{err:?}"
    );

    write(
        dir.path(),
        labels_name.trim_end_matches(".gz"),
        &encode_labels(&[0, 1, 9, 2]),
    );
    let data = IdxDataset::FashionMnist
        .load(dir.path(), Split::Test, false)
        .unwrap();
    assert_eq!((data.len(), data.height, data.width), (4, 3, 2));
    assert_eq!(data.class_names[9], "Ankle boot");
    // With verification, the generated .gz is not the official file.
    let err = IdxDataset::FashionMnist
        .load(dir.path(), Split::Test, true)
        .unwrap_err();
    assert!(matches!(err, DataError::Checksum { .. }), "{err:?}");
    assert!(err.to_string().contains(images_name), "{err}");

    // Tensors are scaled to [−1, 1].
    let t = data.to_tensor(&[0, 3], &candle_core::Device::Cpu).unwrap();
    assert_eq!(t.dims(), &[2, 1, 3, 2]);
    let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(v[0], data.image(0)[0] as f32 / 127.5 - 1.0);
    assert!(v.iter().all(|x| (-1.0..=1.0).contains(x)));
}

#[test]
fn locating_reports_every_place_searched() {
    let dir = tempfile::tempdir().unwrap();
    let dirs = IdxDataset::Mnist.search_dirs(Some(dir.path()));
    assert_eq!(dirs[0], dir.path().join("mnist"));
    assert_eq!(dirs[1], dir.path());
    let err = IdxDataset::Mnist
        .locate_in(&dirs, Split::Train)
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("mnist not found") && text.contains(&dir.path().display().to_string()),
        "{text}"
    );
}
