//! The classifier learns a generated task, saves and loads exactly; and the shipped weights
//! reach their stated accuracy on the real Fashion-MNIST test set (skipped when absent).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{Device, Tensor};
use ddpm_data::{IdxDataset, ImageDataset, LabeledImages, Split};
use ddpm_eval::{
    accuracy, train_classifier, Classifier, ClassifierTraining, CLASSIFIER_FEATURES,
    SHIPPED_CLASSIFIER_OUTPUTS,
};

/// Two classes of 28×28 images: a bright horizontal bar or a bright vertical bar, at
/// varying positions, on noise.
fn bars(n: usize, seed: u64) -> LabeledImages {
    let mut state = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut pixels = Vec::with_capacity(n * 784);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let label = (i % 2) as u8;
        let at = 4 + (next() % 20) as usize;
        for y in 0..28 {
            for x in 0..28 {
                let on = if label == 0 {
                    y / 2 == at / 2
                } else {
                    x / 2 == at / 2
                };
                let noise = (next() % 60) as u8;
                pixels.push(if on { 255 - noise } else { noise });
            }
        }
        labels.push(label);
    }
    LabeledImages {
        height: 28,
        width: 28,
        pixels,
        labels,
        class_names: vec!["horizontal".into(), "vertical".into()],
    }
}

#[test]
fn learns_a_generated_task_and_round_trips() {
    let device = Device::Cpu;
    let train: Arc<dyn ImageDataset> = Arc::new(bars(256, 1));
    let test: Arc<dyn ImageDataset> = Arc::new(bars(128, 2));
    let config = ClassifierTraining {
        epochs: 3,
        batch_size: 32,
        lr: 2e-3,
        horizontal_flip: false,
        ..ClassifierTraining::default()
    };
    let (model, varmap, reports) = train_classifier(
        &config,
        Arc::clone(&train),
        Arc::clone(&test),
        &device,
        &mut |_, _| {},
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(reports.len(), 3);
    // Chance is 50%; the bars are unmistakable.
    let last = reports.last().unwrap();
    assert!(last.test_accuracy > 0.95, "{reports:?}");
    assert!(reports[0].loss > last.loss, "{reports:?}");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.safetensors");
    Classifier::save(&varmap, &path).unwrap();
    // Two classes and the outlier class.
    let loaded = Classifier::load(&path, 3, &device).unwrap();
    let x = train
        .get(0)
        .map(|(v, _)| Tensor::from_vec(v, (1, 1, 28, 28), &device).unwrap())
        .unwrap();
    let a = model.features(&x).unwrap();
    let b = loaded.features(&x).unwrap();
    assert_eq!(a.dims(), &[1, CLASSIFIER_FEATURES]);
    assert_eq!(
        a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        b.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    );
    let acc = accuracy(&loaded, test, &device).unwrap();
    assert!((acc - last.test_accuracy).abs() < 1e-12);

    let err = Classifier::load(&path, 10, &device)
        .unwrap_err()
        .to_string();
    assert!(err.contains("c.safetensors"), "{err}");
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn shipped_classifier_reaches_its_accuracy_on_real_data() {
    let data = repo_root().join("../shared/data/fashion-mnist");
    let weights = repo_root().join("assets/fashion-mnist-classifier.safetensors");
    if !data.join("t10k-images-idx3-ubyte.gz").exists() {
        eprintln!("SKIPPED: no Fashion-MNIST at {}", data.display());
        return;
    }
    assert!(weights.exists(), "the shipped classifier is missing");
    let device = Device::Cpu;
    let test = IdxDataset::FashionMnist
        .load(&data, Split::Test, true)
        .unwrap();
    let model = Classifier::load(&weights, SHIPPED_CLASSIFIER_OUTPUTS, &device).unwrap();
    let acc = accuracy(&model, Arc::new(test), &device).unwrap();
    // The README states the accuracy to 0.01%; evaluation is deterministic up to float
    // summation order, which moves a handful of borderline images at most.
    assert!(acc >= 0.92, "test accuracy {acc}");
}

/// The classifier's features of `images` (N, 1, 28, 28).
fn features(model: &Classifier, images: &Tensor) -> Vec<f32> {
    model
        .features(images)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

#[test]
fn metrics_order_real_data_single_class_and_noise() {
    use ddpm_eval::{frechet_distance, precision_recall, FeatureStats};
    let data = repo_root().join("../shared/data/fashion-mnist");
    let weights = repo_root().join("assets/fashion-mnist-classifier.safetensors");
    if !data.join("t10k-images-idx3-ubyte.gz").exists() {
        eprintln!("SKIPPED: no Fashion-MNIST at {}", data.display());
        return;
    }
    let device = Device::Cpu;
    let model = Classifier::load(&weights, SHIPPED_CLASSIFIER_OUTPUTS, &device).unwrap();
    let test = IdxDataset::FashionMnist
        .load(&data, Split::Test, false)
        .unwrap();
    let train = IdxDataset::FashionMnist
        .load(&data, Split::Train, false)
        .unwrap();
    let n = 2000;
    let dim = ddpm_eval::CLASSIFIER_FEATURES;
    let take =
        |d: &LabeledImages, idx: &[usize]| features(&model, &d.to_tensor(idx, &device).unwrap());
    let first: Vec<usize> = (0..n).collect();
    let real = take(&test, &first);
    let train_part = take(&train, &first);
    let trousers: Vec<usize> = (0..train.len())
        .filter(|&i| train.labels[i] == 1)
        .take(n)
        .collect();
    let one_class = take(&train, &trousers);
    // Gaussian noise as the issue asks for, N(0, 1) per pixel, unclipped: the classifier's
    // outlier class saw only clipped noise. Uniform noise U(−1, 1) it did see. Pixel-shuffled
    // training images (a real intensity histogram, no shape) it never saw in any form.
    let gaussian = features(
        &model,
        &Tensor::randn(0f32, 1f32, (n, 1, 28, 28), &device).unwrap(),
    );
    let uniform = features(
        &model,
        &Tensor::rand(-1f32, 1f32, (n, 1, 28, 28), &device).unwrap(),
    );
    let shuffled = {
        let images = train.to_tensor(&first, &device).unwrap();
        let mut pixels = images.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for image in pixels.chunks_mut(28 * 28) {
            for i in (1..image.len()).rev() {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1);
                image.swap(i, ((state >> 33) % (i as u64 + 1)) as usize);
            }
        }
        features(
            &model,
            &Tensor::from_vec(pixels, (n, 1, 28, 28), &device).unwrap(),
        )
    };
    let stats = |f: &[f32]| FeatureStats::from_rows(f, dim).unwrap();
    let fid = |f: &[f32]| frechet_distance(&stats(f), &stats(&real)).unwrap();
    let (fid_train, fid_class) = (fid(&train_part), fid(&one_class));
    let (fid_gaussian, fid_uniform, fid_shuffled) = (fid(&gaussian), fid(&uniform), fid(&shuffled));
    eprintln!(
        "FID: train {fid_train:.3}, one class {fid_class:.3}, Gaussian noise {fid_gaussian:.3}, uniform noise {fid_uniform:.3}, shuffled pixels {fid_shuffled:.3}"
    );
    // Same distribution: only sampling error (4.2 measured at n = 2000). One class (a tenth
    // of the modes) is far (1090), noise further (Gaussian 2000, uniform 1987, shuffled
    // pixels 1500 measured): the order of the issue, with wide margins.
    assert!(fid_train < 0.02 * fid_class, "{fid_train} {fid_class}");
    for (name, fid_noise) in [
        ("Gaussian", fid_gaussian),
        ("uniform", fid_uniform),
        ("shuffled", fid_shuffled),
    ] {
        assert!(fid_class < fid_noise, "{name}: {fid_class} ≥ {fid_noise}");
    }
    let pr = |f: &[f32]| precision_recall(&real, f, dim, 3).unwrap();
    let (p_train, r_train) = pr(&train_part);
    let (p_class, r_class) = pr(&one_class);
    let noises = [
        ("Gaussian", pr(&gaussian)),
        ("uniform", pr(&uniform)),
        ("shuffled", pr(&shuffled)),
    ];
    eprintln!(
        "precision/recall: train {p_train:.3}/{r_train:.3}, one class {p_class:.3}/{r_class:.3}, {}",
        noises
            .iter()
            .map(|(name, (p, r))| format!("{name} {p:.3}/{r:.3}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    // Noise is neither realistic (precision) nor covering (recall): 0.000/0.000 measured for
    // both kinds of noise (bound: a few borderline images in 2000); shuffled pixels, a kind
    // the classifier never saw, 0.043/0.004 (bound 0.1: near 0, against 0.84 for real
    // images).
    for ((name, (p, r)), bound) in noises.into_iter().zip([0.02, 0.02, 0.1]) {
        assert!(p < bound && r < bound, "{name}: precision {p}, recall {r}");
    }
    assert!(p_train > 0.6 && r_train > 0.6, "{p_train} {r_train}");
    // Mode collapse: real-looking images (high precision) covering one class (low recall).
    assert!(p_class > 0.6 && r_class < 0.25, "{p_class} {r_class}");
}
