//! Batching: coverage, seeded order, resume, padding, flips, and errors.

use std::sync::Arc;

use candle_core::Device;
use ddpm_data::{BatchLoader, ImageDataset, LabeledImages, LoaderConfig};

/// n images of 2×3 whose pixels encode (image index, position), labels = index mod 10.
fn dataset(n: usize) -> Arc<dyn ImageDataset> {
    let pixels = (0..n)
        .flat_map(|i| (0..6).map(move |p| ((i * 6 + p) % 251) as u8))
        .collect();
    Arc::new(LabeledImages {
        height: 2,
        width: 3,
        pixels,
        labels: (0..n).map(|i| (i % 10) as u8).collect(),
        class_names: (0..10).map(|c| c.to_string()).collect(),
    })
}

fn loader(n: usize, config: LoaderConfig) -> BatchLoader {
    BatchLoader::new(dataset(n), config).unwrap()
}

#[test]
fn an_epoch_visits_every_example_once() {
    let l = loader(
        103,
        LoaderConfig {
            batch_size: 10,
            drop_last: false,
            ..Default::default()
        },
    );
    assert_eq!(l.batches_per_epoch(), 11);
    let mut seen = Vec::new();
    for batch in l.epoch(0, 0, &Device::Cpu) {
        let batch = batch.unwrap();
        let (n, c, h, w) = batch.images.dims4().unwrap();
        assert_eq!((c, h, w), (1, 2, 3));
        let images = batch
            .images
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let labels = batch.labels.to_vec1::<u32>().unwrap();
        for k in 0..n {
            // Recover the example from its first pixel and check its label came with it.
            let first = ((images[k * 6] + 1.0) * 127.5).round() as usize;
            let example = (0..103)
                .find(|i| (i * 6) % 251 == first && labels[k] as usize == i % 10)
                .unwrap();
            seen.push(example);
        }
    }
    seen.sort();
    assert_eq!(seen, (0..103).collect::<Vec<_>>());
    let dropping = loader(
        103,
        LoaderConfig {
            batch_size: 10,
            drop_last: true,
            ..Default::default()
        },
    );
    assert_eq!(dropping.batches_per_epoch(), 10);
    assert_eq!(dropping.epoch(0, 0, &Device::Cpu).count(), 10);
}

#[test]
fn order_is_seeded_per_epoch_and_resumable() {
    let cfg = LoaderConfig {
        batch_size: 8,
        seed: 42,
        ..Default::default()
    };
    let (a, b) = (loader(64, cfg.clone()), loader(64, cfg.clone()));
    assert_eq!(a.order(3), b.order(3));
    assert_ne!(a.order(3), a.order(4));
    let mut sorted = a.order(3);
    sorted.sort();
    assert_eq!(sorted, (0..64).collect::<Vec<_>>());
    let other = loader(
        64,
        LoaderConfig {
            seed: 43,
            ..cfg.clone()
        },
    );
    assert_ne!(a.order(3), other.order(3));
    // Resuming at batch 5 gives the same batches as the uninterrupted epoch.
    let full: Vec<Vec<f32>> = a
        .epoch(2, 0, &Device::Cpu)
        .map(|b| b.unwrap().images.flatten_all().unwrap().to_vec1().unwrap())
        .collect();
    let tail: Vec<Vec<f32>> = a
        .epoch(2, 5, &Device::Cpu)
        .map(|b| b.unwrap().images.flatten_all().unwrap().to_vec1().unwrap())
        .collect();
    assert_eq!(&full[5..], &tail[..]);
    let unshuffled = loader(
        64,
        LoaderConfig {
            shuffle: false,
            ..cfg
        },
    );
    assert_eq!(unshuffled.order(7), (0..64).collect::<Vec<_>>());
}

#[test]
fn padding_surrounds_images_with_background() {
    let l = loader(
        4,
        LoaderConfig {
            batch_size: 4,
            shuffle: false,
            pad: 2,
            ..Default::default()
        },
    );
    assert_eq!(l.example_dims(), (1, 6, 7));
    let batch = l.host_batch(0, 0).unwrap();
    assert_eq!(batch.shape, (4, 1, 6, 7));
    let img = &batch.images[7 * 6..2 * 7 * 6]; // example 1
    for y in 0..6 {
        for x in 0..7 {
            let v = img[y * 7 + x];
            if (2..4).contains(&y) && (2..5).contains(&x) {
                let p = (6 + (y - 2) * 3 + (x - 2)) as f32;
                assert_eq!(v, p / 127.5 - 1.0, "({y},{x})");
            } else {
                assert_eq!(v, -1.0, "border ({y},{x})");
            }
        }
    }
}

#[test]
fn flips_mirror_about_half_the_examples() {
    let cfg = LoaderConfig {
        batch_size: 200,
        shuffle: false,
        horizontal_flip: true,
        seed: 1,
        ..Default::default()
    };
    let l = loader(200, cfg);
    let plain = loader(
        200,
        LoaderConfig {
            horizontal_flip: false,
            batch_size: 200,
            shuffle: false,
            ..Default::default()
        },
    );
    let (f, p) = (l.host_batch(0, 0).unwrap(), plain.host_batch(0, 0).unwrap());
    let mut flipped = 0;
    for i in 0..200 {
        let (fi, pi) = (&f.images[i * 6..(i + 1) * 6], &p.images[i * 6..(i + 1) * 6]);
        let mirrored: Vec<f32> = pi.chunks(3).flat_map(|r| r.iter().rev().copied()).collect();
        if fi == pi {
            continue;
        }
        assert_eq!(
            fi,
            mirrored.as_slice(),
            "example {i} is neither itself nor its mirror"
        );
        flipped += 1;
    }
    // Binomial(200, ½): 5 standard deviations is ±35.
    assert!((65..=135).contains(&flipped), "{flipped} flipped");
    assert_eq!(f.labels, p.labels);
}

#[test]
fn invalid_configurations_are_errors() {
    let err = BatchLoader::new(
        dataset(10),
        LoaderConfig {
            batch_size: 0,
            ..Default::default()
        },
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("batch size"), "{err}");
    let err = BatchLoader::new(
        dataset(10),
        LoaderConfig {
            batch_size: 11,
            drop_last: true,
            ..Default::default()
        },
    )
    .err()
    .unwrap();
    assert!(
        err.to_string().contains("11 exceeds the 10 examples"),
        "{err}"
    );
}
