//! Fetching dataset files over HTTP, verified before they are cached.

use std::io::{Read, Write};
use std::path::Path;

use md5::{Digest, Md5};

use crate::error::{io_error, DataError, Result};

/// Largest file accepted, so a misbehaving server cannot fill the disk.
const MAX_BYTES: u64 = 512 * 1024 * 1024;

/// Downloads `url` to `dest`, verifying its md5 first: the body is streamed into
/// `dest` + `.part` while hashed, and renamed to `dest` only when the hash matches, so a
/// corrupt or partial download is never left where a later run would trust it.
pub fn download_verified(url: &str, dest: &Path, expected_md5: &str) -> Result<()> {
    let fail = |reason: String| DataError::Download {
        url: url.to_string(),
        reason,
    };
    if let Some(dir) = dest.parent() {
        std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    }
    let part = dest.with_extension(match dest.extension() {
        Some(ext) => format!("{}.part", ext.to_string_lossy()),
        None => "part".to_string(),
    });
    tracing::info!(url, dest = %dest.display(), "downloading");
    let mut response = ureq::get(url).call().map_err(|e| fail(e.to_string()))?;
    let mut reader = response.body_mut().with_config().limit(MAX_BYTES).reader();
    let result = (|| -> Result<String> {
        let mut file = std::fs::File::create(&part).map_err(io_error(&part))?;
        let mut hasher = Md5::new();
        let mut buffer = vec![0u8; 1 << 16];
        loop {
            let n = reader.read(&mut buffer).map_err(|e| fail(e.to_string()))?;
            if n == 0 {
                break;
            }
            hasher.update(&buffer[..n]);
            file.write_all(&buffer[..n]).map_err(io_error(&part))?;
        }
        file.sync_all().map_err(io_error(&part))?;
        Ok(format!("{:x}", hasher.finalize()))
    })();
    let found = match result {
        Ok(found) => found,
        Err(err) => {
            let _ = std::fs::remove_file(&part);
            return Err(err);
        }
    };
    if found != expected_md5 {
        let _ = std::fs::remove_file(&part);
        return Err(DataError::Checksum {
            path: dest.to_path_buf(),
            expected: expected_md5.to_string(),
            found,
        });
    }
    std::fs::rename(&part, dest).map_err(io_error(dest))?;
    Ok(())
}
