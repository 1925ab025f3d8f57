//! Checking, cleaning and resizing an upload.

use std::io::Cursor;
use std::sync::Arc;

use bytes::Bytes;
use image::codecs::jpeg::JpegEncoder;
use image::imageops::FilterType;
use image::{DynamicImage, ImageDecoder as _, ImageFormat, ImageReader, RgbImage};
use sha2::{Digest as _, Sha256};

/// One size an upload is stored in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Variant {
    /// Its name in URLs and keys (`card`).
    pub name: &'static str,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

/// An event's cover: `card` for lists (16:9), `wide` for its page.
pub const COVER: &[Variant] =
    &[Variant { name: "card", width: 640, height: 360 }, Variant { name: "wide", width: 1280, height: 720 }];

/// A person's avatar, square: `small` beside a name, `large` on their page.
pub const AVATAR: &[Variant] =
    &[Variant { name: "small", width: 96, height: 96 }, Variant { name: "large", width: 400, height: 400 }];

/// What an upload may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest file, in bytes.
    pub max_bytes: usize,
    /// Longest side, in pixels.
    pub max_side: u32,
    /// Most pixels in all (width × height).
    pub max_pixels: u64,
}

impl Default for Limits {
    /// 5 MiB, 8000 pixels a side, 16 megapixels (a 12 MP phone photo fits). Decoding one takes
    /// up to 4 bytes a pixel (8 for a 16-bit PNG) and twice that while it is turned upright:
    /// 128 MB for an 8-bit picture at the limit, so `app.pictures.max_concurrent` (default 1)
    /// times that must fit the service's memory.
    fn default() -> Self {
        Self { max_bytes: 5 * 1024 * 1024, max_side: 8000, max_pixels: 16_000_000 }
    }
}

/// Why an upload was refused. Each is the uploader's to fix, answered 400 or 413 (see
/// [`ImageError::problem`]), except [`ImageError::Busy`] (503).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ImageError {
    /// Nothing was sent.
    #[error("the file is empty")]
    Empty,
    /// More bytes than [`Limits::max_bytes`].
    #[error("the file is larger than {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// Not a picture in a format taken here.
    #[error("the file is not a JPEG, PNG or WebP picture")]
    NotAnImage,
    /// Wider, taller or with more pixels than the limits.
    #[error("the picture is {width}×{height}: at most {max_side} pixels a side and {max_pixels} in all")]
    TooManyPixels {
        /// Its declared width.
        width: u32,
        /// Its declared height.
        height: u32,
        /// [`Limits::max_side`].
        max_side: u32,
        /// [`Limits::max_pixels`].
        max_pixels: u64,
    },
    /// A picture's header, but pixels that do not decode.
    #[error("the picture is damaged or truncated")]
    Corrupt,
    /// Every decoding slot is taken and the wait is over.
    #[error("too many pictures are being processed")]
    Busy,
}

impl ImageError {
    /// The problem it answers.
    pub fn problem(&self) -> keel::http::Problem {
        use http::StatusCode;
        use keel::http::Problem;
        match self {
            Self::TooLarge { .. } => {
                Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large", "Picture too large")
                    .code("IMAGE_TOO_LARGE")
                    .detail(self.to_string())
            }
            Self::Busy => Problem::new(StatusCode::SERVICE_UNAVAILABLE, "images-busy", "Too many pictures at once")
                .code("IMAGES_BUSY")
                .detail("retry in a moment")
                .retry_after(2)
                .overloaded(),
            Self::TooManyPixels { .. } => Problem::new(StatusCode::BAD_REQUEST, "invalid-image", "Picture too big")
                .code("IMAGE_DIMENSIONS")
                .detail(self.to_string()),
            _ => Problem::new(StatusCode::BAD_REQUEST, "invalid-image", "Not a picture we can use")
                .code("INVALID_IMAGE")
                .detail(self.to_string()),
        }
    }
}

/// An upload, cleaned and resized.
#[derive(Debug, Clone)]
pub struct Processed {
    /// 16 hex digits of the SHA-256 of the variants: a new picture, a new name.
    pub hash: String,
    /// Each variant's JPEG, in the order asked for.
    pub variants: Vec<(Variant, Bytes)>,
}

/// JPEG quality of the stored variants: no visible loss at these sizes, a third of quality 95.
const QUALITY: u8 = 82;

/// Checks, decodes, cleans and resizes `bytes` into `variants` (see the crate's docs). CPU-bound:
/// call it through [`Pipeline`] from async code.
pub fn process(bytes: &[u8], variants: &[Variant], limits: Limits) -> Result<Processed, ImageError> {
    if bytes.is_empty() {
        return Err(ImageError::Empty);
    }
    if bytes.len() > limits.max_bytes {
        return Err(ImageError::TooLarge { limit: limits.max_bytes });
    }
    let mut reader = ImageReader::new(Cursor::new(bytes)).with_guessed_format().map_err(|_| ImageError::NotAnImage)?;
    if !matches!(reader.format(), Some(ImageFormat::Jpeg | ImageFormat::Png | ImageFormat::WebP)) {
        return Err(ImageError::NotAnImage);
    }
    let mut decoder_limits = image::Limits::default();
    decoder_limits.max_image_width = Some(limits.max_side);
    decoder_limits.max_image_height = Some(limits.max_side);
    // The decoded pixels (4 bytes each at most, 8 for 16-bit PNGs) and the codec's buffers.
    decoder_limits.max_alloc = Some(limits.max_pixels.saturating_mul(8).saturating_add(64 << 20));
    reader.limits(decoder_limits);
    let mut decoder = reader.into_decoder().map_err(|e| too_big_or(e, limits, ImageError::NotAnImage))?;
    let (width, height) = decoder.dimensions();
    if width == 0
        || height == 0
        || width > limits.max_side
        || height > limits.max_side
        || u64::from(width) * u64::from(height) > limits.max_pixels
    {
        return Err(ImageError::TooManyPixels {
            width,
            height,
            max_side: limits.max_side,
            max_pixels: limits.max_pixels,
        });
    }
    let orientation = decoder.orientation().unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| too_big_or(e, limits, ImageError::Corrupt))?;
    img.apply_orientation(orientation);
    // One cheap downscale first, to the least size that still fills every variant: the
    // full-size pixels are dropped before any other copy is made (memory stays near one decoded
    // picture, see `Limits`).
    let (w, h) = fill_size(img.width(), img.height(), variants);
    let img = if w < img.width() { img.thumbnail_exact(w, h) } else { img };
    let rgb = flatten(img);
    let mut out = Vec::with_capacity(variants.len());
    let mut digest = Sha256::new();
    for v in variants {
        let resized = DynamicImage::ImageRgb8(rgb.clone()).resize_to_fill(v.width, v.height, FilterType::CatmullRom);
        let mut buf = Vec::new();
        JpegEncoder::new_with_quality(&mut buf, QUALITY)
            .encode_image(&resized.to_rgb8())
            .map_err(|_| ImageError::Corrupt)?;
        digest.update(v.name.as_bytes());
        digest.update((buf.len() as u64).to_be_bytes());
        digest.update(&buf);
        out.push((*v, Bytes::from(buf)));
    }
    let hash = digest.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect();
    Ok(Processed { hash, variants: out })
}

/// A decoder's refusal on its limits is the picture being too big; any other error is `other`.
fn too_big_or(e: image::ImageError, limits: Limits, other: ImageError) -> ImageError {
    match e {
        image::ImageError::Limits(_) => {
            ImageError::TooManyPixels { width: 0, height: 0, max_side: limits.max_side, max_pixels: limits.max_pixels }
        }
        _ => other,
    }
}

/// The least size, keeping the aspect ratio, that covers each of `variants` (the picture's own
/// when it is smaller).
fn fill_size(width: u32, height: u32, variants: &[Variant]) -> (u32, u32) {
    let scale = variants
        .iter()
        .map(|v| (f64::from(v.width) / f64::from(width)).max(f64::from(v.height) / f64::from(height)))
        .fold(0.0_f64, f64::max);
    if scale >= 1.0 || scale <= 0.0 {
        return (width, height);
    }
    let side = |n: u32| ((f64::from(n) * scale).ceil() as u32).clamp(1, n);
    (side(width), side(height))
}

/// The picture as RGB, transparent parts on white (JPEG has no transparency; black would
/// turn a logo's background dark). Consumes it: no second full-size copy.
fn flatten(img: DynamicImage) -> RgbImage {
    if !img.color().has_alpha() {
        return img.into_rgb8();
    }
    let rgba = img.into_rgba8();
    RgbImage::from_fn(rgba.width(), rgba.height(), |x, y| {
        let p = rgba.get_pixel(x, y).0;
        let a = u16::from(p[3]);
        let over = |c: u8| ((u16::from(c) * a + 255 * (255 - a) + 127) / 255) as u8;
        image::Rgb([over(p[0]), over(p[1]), over(p[2])])
    })
}

/// Runs [`process`] on the blocking pool, at most `concurrency` at once: a burst of uploads
/// queues for a short while, then is refused ([`ImageError::Busy`]) instead of taking every core.
#[derive(Debug, Clone)]
pub struct Pipeline {
    slots: Arc<tokio::sync::Semaphore>,
    wait: std::time::Duration,
    limits: Limits,
}

impl Pipeline {
    /// At most `concurrency` decodes at once, each waiting at most `wait` for a slot.
    pub fn new(concurrency: usize, wait: std::time::Duration, limits: Limits) -> Self {
        Self { slots: Arc::new(tokio::sync::Semaphore::new(concurrency.max(1))), wait, limits }
    }

    /// The limits uploads are held to.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// [`process`] off the async threads.
    pub async fn process(&self, bytes: Bytes, variants: &'static [Variant]) -> Result<Processed, ImageError> {
        let permit = match tokio::time::timeout(self.wait, self.slots.clone().acquire_owned()).await {
            Ok(Ok(p)) => p,
            _ => return Err(ImageError::Busy),
        };
        let limits = self.limits;
        let r = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            process(&bytes, variants, limits)
        })
        .await;
        // A panic in a codec is a picture we cannot use, not a crash of the service.
        r.unwrap_or(Err(ImageError::Corrupt))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use image::{ImageEncoder as _, Rgba, RgbaImage};

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img =
            RgbaImage::from_fn(w, h, |x, _| if x < w / 2 { Rgba([200, 10, 10, 255]) } else { Rgba([0, 0, 0, 0]) });
        let mut buf = Vec::new();
        image::codecs::png::PngEncoder::new(&mut buf).write_image(&img, w, h, image::ExtendedColorType::Rgba8).unwrap();
        buf
    }

    fn jpeg(w: u32, h: u32) -> Vec<u8> {
        let img = RgbImage::from_fn(w, h, |x, y| image::Rgb([(x % 256) as u8, (y % 256) as u8, 90]));
        let mut buf = Vec::new();
        JpegEncoder::new_with_quality(&mut buf, 90).encode_image(&img).unwrap();
        buf
    }

    /// Inserts an APP1 segment after SOI: an EXIF block with an orientation tag (value
    /// `orientation`) and a GPS IFD pointer, as a phone writes them.
    fn with_exif(jpeg: &[u8], orientation: u16) -> Vec<u8> {
        let mut tiff = Vec::new();
        tiff.extend_from_slice(b"MM\x00\x2a\x00\x00\x00\x08");
        // IFD0: two entries: Orientation (0x0112) and GPSInfo (0x8825) pointing at an IFD.
        tiff.extend_from_slice(&2u16.to_be_bytes());
        tiff.extend_from_slice(&[0x01, 0x12, 0x00, 0x03, 0, 0, 0, 1]);
        tiff.extend_from_slice(&orientation.to_be_bytes());
        tiff.extend_from_slice(&[0, 0]);
        let gps_at = 8 + 2 + 12 * 2 + 4;
        tiff.extend_from_slice(&[0x88, 0x25, 0x00, 0x04, 0, 0, 0, 1]);
        tiff.extend_from_slice(&(gps_at as u32).to_be_bytes());
        tiff.extend_from_slice(&0u32.to_be_bytes());
        // GPS IFD: GPSLatitudeRef 'N' (and a marker string to look for afterwards).
        tiff.extend_from_slice(&1u16.to_be_bytes());
        tiff.extend_from_slice(&[0x00, 0x01, 0x00, 0x02, 0, 0, 0, 2, b'N', 0, 0, 0]);
        tiff.extend_from_slice(&0u32.to_be_bytes());
        tiff.extend_from_slice(b"SECRET-GPS-38.7223N");
        let mut app1 = b"Exif\x00\x00".to_vec();
        app1.extend_from_slice(&tiff);
        let mut out = jpeg[..2].to_vec();
        out.extend_from_slice(&[0xFF, 0xE1]);
        out.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
        out.extend_from_slice(&app1);
        out.extend_from_slice(&jpeg[2..]);
        out
    }

    fn dims(jpeg: &[u8]) -> (u32, u32) {
        let img = image::load_from_memory_with_format(jpeg, ImageFormat::Jpeg).unwrap();
        (img.width(), img.height())
    }

    #[test]
    fn each_variant_is_a_jpeg_of_its_size() {
        for input in [png(300, 200), jpeg(2000, 900)] {
            let p = process(&input, COVER, Limits::default()).unwrap();
            assert_eq!(p.variants.len(), 2);
            for (v, bytes) in &p.variants {
                assert_eq!(&bytes[..3], &[0xFF, 0xD8, 0xFF], "{} is a JPEG", v.name);
                assert_eq!(dims(bytes), (v.width, v.height));
            }
            assert_eq!(p.hash.len(), 16);
            assert!(p.hash.bytes().all(|b| b.is_ascii_hexdigit()));
        }
    }

    #[test]
    fn a_large_picture_is_scaled_once_to_just_fill_the_largest_variant() {
        // A 24 MP camera frame: 1280×854 still covers 1280×720 (wide) and 640×360 (card).
        assert_eq!(fill_size(6000, 4000, COVER), (1280, 854));
        // Portrait: the width decides.
        assert_eq!(fill_size(3000, 4000, COVER), (1280, 1707));
        // Already small: kept as it is (the variants upscale it).
        assert_eq!(fill_size(800, 600, COVER), (800, 600));
        assert_eq!(fill_size(2000, 2000, AVATAR), (400, 400));
    }

    #[test]
    fn the_same_picture_has_the_same_name_and_another_another() {
        let a = process(&jpeg(400, 300), AVATAR, Limits::default()).unwrap();
        let b = process(&jpeg(400, 300), AVATAR, Limits::default()).unwrap();
        let c = process(&png(400, 300), AVATAR, Limits::default()).unwrap();
        assert_eq!(a.hash, b.hash);
        assert_ne!(a.hash, c.hash);
    }

    #[test]
    fn exif_and_gps_do_not_survive_and_orientation_is_applied() {
        // Orientation 6: the camera was turned; the picture is shown rotated 90°.
        let input = with_exif(&jpeg(400, 200), 6);
        assert!(input.windows(19).any(|w| w == b"SECRET-GPS-38.7223N"));
        let p = process(&input, &[Variant { name: "x", width: 100, height: 200 }], Limits::default()).unwrap();
        let out = &p.variants[0].1;
        assert!(!out.windows(4).any(|w| w == b"Exif"), "no EXIF block");
        assert!(!out.windows(6).any(|w| w == b"SECRET"), "no GPS data");
        // Upright: the 400×200 landscape became 200×400 portrait before the crop, so the
        // left-to-right gradient of the original now runs top to bottom.
        let img = image::load_from_memory(out).unwrap().to_rgb8();
        let (top, bottom) = (img.get_pixel(50, 5).0[0], img.get_pixel(50, 195).0[0]);
        assert!(top.abs_diff(bottom) > 100, "rotated: red channel {top} at the top, {bottom} at the bottom");
    }

    #[test]
    fn transparency_becomes_white() {
        let p = process(&png(200, 100), &[Variant { name: "x", width: 200, height: 100 }], Limits::default()).unwrap();
        let img = image::load_from_memory(&p.variants[0].1).unwrap().to_rgb8();
        let right = img.get_pixel(180, 50).0;
        assert!(right.iter().all(|c| *c > 240), "transparent half is white: {right:?}");
        let left = img.get_pixel(20, 50).0;
        assert!(left[0] > 150 && left[1] < 60, "opaque half kept: {left:?}");
    }

    #[test]
    fn type_is_judged_by_content() {
        let text = b"not a picture, whatever cover.jpg says";
        assert_eq!(process(text, COVER, Limits::default()).unwrap_err(), ImageError::NotAnImage);
        let svg = b"<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>";
        assert_eq!(process(svg, COVER, Limits::default()).unwrap_err(), ImageError::NotAnImage);
        assert_eq!(process(b"", COVER, Limits::default()).unwrap_err(), ImageError::Empty);
        // A GIF (1×1, the smallest valid file) is a picture, but not one taken here.
        let gif = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;";
        assert_eq!(process(gif, COVER, Limits::default()).unwrap_err(), ImageError::NotAnImage);
    }

    #[test]
    fn a_decompression_bomb_is_refused_before_decoding() {
        // A PNG header declaring 60000×60000 (3.6 gigapixels) and a few bytes of data.
        let mut bomb = png(1, 1);
        bomb[16..20].copy_from_slice(&60_000u32.to_be_bytes());
        bomb[20..24].copy_from_slice(&60_000u32.to_be_bytes());
        match process(&bomb, COVER, Limits::default()) {
            Err(ImageError::TooManyPixels { .. } | ImageError::NotAnImage) => {}
            other => panic!("bomb accepted or misjudged: {other:?}"),
        }
        // Within the side limit but over the pixel cap.
        let limits = Limits { max_pixels: 10_000, ..Limits::default() };
        assert!(matches!(process(&jpeg(200, 200), COVER, limits), Err(ImageError::TooManyPixels { .. })));
        let limits = Limits { max_side: 100, ..Limits::default() };
        assert!(matches!(process(&jpeg(200, 50), COVER, limits), Err(ImageError::TooManyPixels { .. })));
    }

    #[test]
    fn too_many_bytes_and_truncated_files_are_refused() {
        let big = jpeg(300, 300);
        let limits = Limits { max_bytes: big.len() - 1, ..Limits::default() };
        assert_eq!(process(&big, COVER, limits).unwrap_err(), ImageError::TooLarge { limit: big.len() - 1 });
        // Cut inside the headers: nothing to decode.
        for cut in [&big[..40], &png(300, 300)[..60]] {
            assert!(matches!(
                process(cut, COVER, Limits::default()),
                Err(ImageError::Corrupt | ImageError::NotAnImage)
            ));
        }
        // Cut inside the pixels: refused, or (as browsers show it) the part that is there,
        // encoded anew like any other.
        match process(&big[..big.len() / 3], COVER, Limits::default()) {
            Err(ImageError::Corrupt) => {}
            Ok(p) => assert!(p.variants.iter().all(|(v, b)| dims(b) == (v.width, v.height))),
            Err(other) => panic!("a truncated JPEG: {other:?}"),
        }
    }

    #[tokio::test]
    async fn the_pipeline_refuses_when_every_slot_is_taken() {
        let pipeline = Pipeline::new(1, std::time::Duration::from_millis(20), Limits::default());
        let held = pipeline.slots.clone().acquire_owned().await.unwrap();
        let r = pipeline.process(Bytes::from(jpeg(50, 50)), COVER).await;
        assert_eq!(r.unwrap_err(), ImageError::Busy);
        drop(held);
        assert!(pipeline.process(Bytes::from(jpeg(50, 50)), COVER).await.is_ok());
    }
}
