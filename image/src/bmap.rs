//! Block maps (`.bmap`, bmaptool's format 2.0): which blocks of an image hold data, so
//! `bmaptool copy` writes only those and checks each range's sha256.

use sha2::{Digest, Sha256};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

pub const BLOCK: u64 = 4096;

/// Ranges of blocks (inclusive) that are not all zero.
pub fn mapped_ranges(path: &Path) -> std::io::Result<(u64, Vec<(u64, u64)>)> {
    let mut f = std::fs::File::open(path)?;
    let size = f.seek(SeekFrom::End(0))?;
    f.seek(SeekFrom::Start(0))?;
    let mut ranges: Vec<(u64, u64)> = vec![];
    let mut buf = vec![0u8; BLOCK as usize];
    let blocks = size.div_ceil(BLOCK);
    for b in 0..blocks {
        let n = read_full(&mut f, &mut buf)?;
        if buf[..n].iter().any(|&x| x != 0) {
            match ranges.last_mut() {
                Some((_, end)) if *end + 1 == b => *end = b,
                _ => ranges.push((b, b)),
            }
        }
    }
    Ok((size, ranges))
}

fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let r = f.read(&mut buf[n..])?;
        if r == 0 {
            break;
        }
        n += r;
    }
    Ok(n)
}

/// The .bmap text for `image`.
pub fn make(image: &Path) -> std::io::Result<String> {
    let (size, ranges) = mapped_ranges(image)?;
    let mut f = std::fs::File::open(image)?;
    let mut body = String::new();
    let mut mapped = 0;
    let mut buf = vec![0u8; BLOCK as usize];
    for (a, b) in &ranges {
        f.seek(SeekFrom::Start(a * BLOCK))?;
        let mut h = Sha256::new();
        for _ in *a..=*b {
            let n = read_full(&mut f, &mut buf)?;
            h.update(&buf[..n]);
        }
        mapped += b - a + 1;
        let range = if a == b {
            a.to_string()
        } else {
            format!("{a}-{b}")
        };
        body.push_str(&format!(
            "        <Range chksum=\"{}\">{range}</Range>\n",
            hex::encode(h.finalize())
        ));
    }
    let with = |sum: &str| {
        format!(
            "<?xml version=\"1.0\" ?>\n<bmap version=\"2.0\">\n    <ImageSize> {size} </ImageSize>\n    <BlockSize> {BLOCK} </BlockSize>\n    <BlocksCount> {} </BlocksCount>\n    <MappedBlocksCount> {mapped} </MappedBlocksCount>\n    <ChecksumType> sha256 </ChecksumType>\n    <BmapFileChecksum> {sum} </BmapFileChecksum>\n    <BlockMap>\n{body}    </BlockMap>\n</bmap>\n",
            size.div_ceil(BLOCK)
        )
    };
    // The file's own checksum is taken with that field all zeros (bmaptool's rule).
    let zeros = "0".repeat(64);
    let sum = hex::encode(Sha256::digest(with(&zeros).as_bytes()));
    Ok(with(&sum))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_skip_zero_blocks() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("img");
        let mut data = vec![0u8; 10 * BLOCK as usize];
        data[0] = 1;
        data[BLOCK as usize + 5] = 1;
        data[5 * BLOCK as usize] = 7;
        std::fs::write(&p, &data).unwrap();
        let (size, r) = mapped_ranges(&p).unwrap();
        assert_eq!(size, 10 * BLOCK);
        assert_eq!(r, vec![(0, 1), (5, 5)]);
        let text = make(&p).unwrap();
        assert!(
            text.contains("<MappedBlocksCount> 3 </MappedBlocksCount>"),
            "{text}"
        );
        assert!(text.contains(">0-1</Range>") && text.contains(">5</Range>"));
        assert!(!text.contains(&"0".repeat(64)));
    }
}
