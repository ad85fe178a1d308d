//! xz compression of SD images, multithreaded (the xz2 crate over liblzma).

use std::io::{Read, Write};
use std::path::Path;

use crate::cache;

/// xz preset for SD images. Preset 1 made the rpi3 image (Tahoe included) 212.4 MiB, over the
/// 200 MB an SD image may weigh; the Mesa/LLVM trim takes most of that away in any preset.
/// Measured on 200 MiB of the rpi3 card (`xz -T2 -N`, machine at load ~4): preset 1 wrote
/// 38.2 MB in 7.5 s, 2: 36.7 MB in 9.9 s, 3: 35.6 MB in 15.3 s, 6: 31.5 MB in 54.9 s. Preset 6
/// cost 7x the time for 17% less, and a build compresses every card twice when it is
/// customised (`make test` builds rpi3 and customises it): preset 3 is the middle.
pub const SD_PRESET: u32 = 3;

/// Compresses `src` to `dst` (under a temporary name until done); returns the bytes written.
pub fn xz(src: &Path, dst: &Path, preset: u32) -> std::io::Result<u64> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1);
    let stream = xz2::stream::MtStreamBuilder::new()
        .threads(threads)
        .preset(preset)
        .check(xz2::stream::Check::Crc64)
        .encoder()
        .map_err(std::io::Error::other)?;
    let tmp = cache::tmp_path(dst);
    let out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp)?);
    let mut enc = xz2::write::XzEncoder::new_stream(out, stream);
    let mut inp = std::fs::File::open(src)?;
    let mut buf = vec![0u8; 4 << 20];
    loop {
        let n = inp.read(&mut buf)?;
        if n == 0 {
            break;
        }
        enc.write_all(&buf[..n])?;
    }
    let mut out = enc.finish()?;
    out.flush()?;
    out.get_ref().sync_all()?;
    drop(out);
    std::fs::rename(&tmp, dst)?;
    Ok(std::fs::metadata(dst)?.len())
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trip_through_xz_tool() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("a.img");
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&src, &data).unwrap();
        let dst = d.path().join("a.img.xz");
        super::xz(&src, &dst, 1).unwrap();
        let out = std::process::Command::new("xz")
            .arg("-dc")
            .arg(&dst)
            .output()
            .unwrap();
        assert!(out.status.success());
        assert_eq!(out.stdout, data);
    }
}
