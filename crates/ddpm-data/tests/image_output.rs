//! Grids, progression strips and GIFs of [−1, 1] tensors.

use candle_core::{Device, Tensor};
use ddpm_data::{grid_image, save_gif, save_grid, save_progression};

#[test]
fn grid_pixels_and_layout() {
    // Three 1-channel 2×2 images with values −1, 0 and 1, two per row.
    let images = Tensor::new(
        &[[[[-1f32; 2]; 2]], [[[0f32; 2]; 2]], [[[1f32; 2]; 2]]],
        &Device::Cpu,
    )
    .unwrap();
    let grid = grid_image(&images, 2).unwrap();
    assert_eq!((grid.width(), grid.height()), (2 + 2 * 4, 2 + 2 * 4));
    assert_eq!(grid.get_pixel(2, 2).0, [0, 0, 0]);
    assert_eq!(grid.get_pixel(6, 2).0, [128, 128, 128]); // 0 → round(127.5) = 128
    assert_eq!(grid.get_pixel(2, 6).0, [255, 255, 255]);
    assert_eq!(grid.get_pixel(0, 0).0, [128, 128, 128]); // padding
                                                         // Out-of-range values are clipped; colour images keep their channels.
    let rgb = Tensor::new(&[[[[3f32]], [[-3f32]], [[0f32]]]], &Device::Cpu).unwrap();
    assert_eq!(
        grid_image(&rgb, 1).unwrap().get_pixel(2, 2).0,
        [255, 0, 128]
    );
    assert!(grid_image(
        &Tensor::zeros((1, 2, 2, 2), candle_core::DType::F32, &Device::Cpu).unwrap(),
        1
    )
    .is_err());
}

#[test]
fn files_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let steps: Vec<Tensor> = (0..4)
        .map(|k| Tensor::full(k as f32 / 3.0 * 2.0 - 1.0, (3, 1, 5, 5), &Device::Cpu).unwrap())
        .collect();
    let grid = dir.path().join("grid.png");
    save_grid(&steps[0], &grid, 8).unwrap();
    let img = image::open(&grid).unwrap();
    assert_eq!((img.width(), img.height()), (2 + 3 * 7, 2 + 7));

    let progression = dir.path().join("progression.png");
    save_progression(&steps, &progression).unwrap();
    let img = image::open(&progression).unwrap().to_rgb8();
    // 3 rows (samples) × 4 columns (steps); column k has gray level k/3.
    assert_eq!((img.width(), img.height()), (2 + 4 * 7, 2 + 3 * 7));
    for k in 0..4u32 {
        let expected = ((k as f32 / 3.0 * 2.0) * 127.5).round() as u8;
        assert_eq!(
            img.get_pixel(2 + k * 7, 2 + 2 * 7).0[0],
            expected,
            "column {k}"
        );
    }

    let gif = dir.path().join("sampling.gif");
    save_gif(&steps, &gif, 3, 80, 1000).unwrap();
    let decoder = image::codecs::gif::GifDecoder::new(std::io::BufReader::new(
        std::fs::File::open(&gif).unwrap(),
    ))
    .unwrap();
    use image::AnimationDecoder;
    let frames = decoder.into_frames().collect_frames().unwrap();
    assert_eq!(frames.len(), 4);
    assert_eq!(frames[3].delay().numer_denom_ms(), (1000, 1));
    assert!(!dir.path().join("sampling.gif.tmp").exists());
}
