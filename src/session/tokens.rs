//! OAuth tokens and where they are persisted after an in-band refresh.
//!
//! cTrader refresh tokens are single-use: a refresh returns a new access token and a new refresh
//! token and invalidates the old refresh token. Both new tokens are therefore written back to the
//! file they came from before anything else, atomically (temporary file in the same directory,
//! then rename), so a crash leaves either the old file or the new one, never half of each.

use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Environment variable (and `.env` key) holding the access token.
pub const ACCESS_TOKEN_VAR: &str = "CTRADER_ACCESS_TOKEN";

/// Environment variable (and `.env` key) holding the refresh token.
pub const REFRESH_TOKEN_VAR: &str = "CTRADER_REFRESH_TOKEN";

/// An access and refresh token pair. `Debug` never shows the values.
#[derive(Clone, PartialEq, Eq)]
pub struct Tokens {
    pub access_token: String,
    pub refresh_token: String,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokens").field("access_token", &"<redacted>").field("refresh_token", &"<redacted>").finish()
    }
}

/// The file the tokens were read from, which also receives refreshed tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenFile {
    /// A `.env` file: only the `CTRADER_ACCESS_TOKEN` and `CTRADER_REFRESH_TOKEN` lines change.
    DotEnv(PathBuf),
    /// A JSON file `{"accessToken": "...", "refreshToken": "..."}` owned by tickgate.
    Json(PathBuf),
}

impl TokenFile {
    /// Chooses the format by extension: `.json` is a JSON token file, anything else `.env` style.
    pub fn for_path(path: &Path) -> TokenFile {
        match path.extension().and_then(|e| e.to_str()) {
            Some(ext) if ext.eq_ignore_ascii_case("json") => TokenFile::Json(path.to_path_buf()),
            _ => TokenFile::DotEnv(path.to_path_buf()),
        }
    }

    /// Reads both tokens from the file; `Ok(None)` when it does not exist or lacks one of them.
    pub fn load(&self) -> anyhow::Result<Option<Tokens>> {
        if !self.path().exists() {
            return Ok(None);
        }
        match self {
            TokenFile::Json(path) => Self::load_json(path).map(Some),
            TokenFile::DotEnv(path) => {
                let entries = dotenvy::from_path_iter(path)
                    .map_err(|e| anyhow::anyhow!("cannot read token file {}: {e}", path.display()))?;
                let mut access_token = None;
                let mut refresh_token = None;
                for entry in entries {
                    let (key, value) =
                        entry.map_err(|e| anyhow::anyhow!("cannot parse token file {}: {e}", path.display()))?;
                    match key.as_str() {
                        ACCESS_TOKEN_VAR => access_token = Some(value),
                        REFRESH_TOKEN_VAR => refresh_token = Some(value),
                        _ => {}
                    }
                }
                Ok(access_token.zip(refresh_token).map(|(access_token, refresh_token)| Tokens { access_token, refresh_token }))
            }
        }
    }

    pub fn path(&self) -> &Path {
        match self {
            TokenFile::DotEnv(path) | TokenFile::Json(path) => path,
        }
    }

    /// Reads the tokens from a JSON token file.
    pub fn load_json(path: &Path) -> anyhow::Result<Tokens> {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Stored {
            access_token: String,
            refresh_token: String,
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read token file {}: {e}", path.display()))?;
        let stored: Stored = serde_json::from_str(&text).map_err(|e| {
            anyhow::anyhow!(
                "token file {} is not valid JSON with accessToken and refreshToken: {e}",
                path.display()
            )
        })?;
        Ok(Tokens { access_token: stored.access_token, refresh_token: stored.refresh_token })
    }

    /// Writes `tokens` to this file atomically, keeping the rest of a `.env` file unchanged.
    pub fn persist(&self, tokens: &Tokens) -> io::Result<()> {
        let contents = match self {
            TokenFile::DotEnv(path) => {
                let existing = match std::fs::read_to_string(path) {
                    Ok(text) => text,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
                    Err(e) => return Err(e),
                };
                update_dotenv(&existing, tokens)
            }
            TokenFile::Json(_) => {
                let value = serde_json::json!({
                    "accessToken": tokens.access_token,
                    "refreshToken": tokens.refresh_token,
                });
                format!("{value:#}\n")
            }
        };
        write_atomically(self.path(), contents.as_bytes())
    }
}

/// Replaces the two token lines of a `.env` text (appending any that are missing) and keeps
/// every other line, comments and order as they were.
pub fn update_dotenv(existing: &str, tokens: &Tokens) -> String {
    let mut access_written = false;
    let mut refresh_written = false;
    let mut out = String::with_capacity(existing.len() + 128);

    for line in existing.lines() {
        match dotenv_key(line) {
            Some(ACCESS_TOKEN_VAR) => {
                if !access_written {
                    out.push_str(&dotenv_line(ACCESS_TOKEN_VAR, &tokens.access_token));
                    out.push('\n');
                }
                access_written = true;
            }
            Some(REFRESH_TOKEN_VAR) => {
                if !refresh_written {
                    out.push_str(&dotenv_line(REFRESH_TOKEN_VAR, &tokens.refresh_token));
                    out.push('\n');
                }
                refresh_written = true;
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }

    if !access_written {
        out.push_str(&dotenv_line(ACCESS_TOKEN_VAR, &tokens.access_token));
        out.push('\n');
    }
    if !refresh_written {
        out.push_str(&dotenv_line(REFRESH_TOKEN_VAR, &tokens.refresh_token));
        out.push('\n');
    }
    out
}

/// Returns the key a `.env` line assigns, accepting an optional `export ` prefix.
fn dotenv_key(line: &str) -> Option<&str> {
    let trimmed = line.trim_start();
    if trimmed.starts_with('#') {
        return None;
    }
    let trimmed = trimmed.strip_prefix("export ").unwrap_or(trimmed).trim_start();
    let (key, _) = trimmed.split_once('=')?;
    Some(key.trim_end())
}

/// Formats one assignment, quoting the value when it contains anything beyond a token's usual
/// characters.
fn dotenv_line(key: &str, value: &str) -> String {
    let plain = value.chars().all(|c| c.is_ascii_alphanumeric() || "-_.~+/=".contains(c));
    if plain {
        format!("{key}={value}")
    } else {
        let escaped = value.replace('\\', "\\\\").replace('"', "\\\"");
        format!("{key}=\"{escaped}\"")
    }
}

/// Writes `contents` to a temporary file beside `path`, syncs it, then renames it over `path`.
/// The file is created readable by its owner only because it holds credentials.
fn write_atomically(path: &Path, contents: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, format!("token path {} has no file name", path.display()))
    })?;
    let temp = dir.join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));

    let result = (|| {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(&temp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> Tokens {
        Tokens { access_token: "new-access".into(), refresh_token: "new-refresh".into() }
    }

    #[test]
    fn dotenv_update_changes_only_token_lines() {
        let existing = "# credentials\nCTRADER_CLIENT_ID=abc\nCTRADER_ACCESS_TOKEN=old-access\n\nexport CTRADER_REFRESH_TOKEN=\"old\"\nOTHER=1\n";

        let updated = update_dotenv(existing, &tokens());

        assert_eq!(
            updated,
            "# credentials\nCTRADER_CLIENT_ID=abc\nCTRADER_ACCESS_TOKEN=new-access\n\nCTRADER_REFRESH_TOKEN=new-refresh\nOTHER=1\n"
        );
    }

    #[test]
    fn dotenv_update_appends_missing_lines() {
        let updated = update_dotenv("CTRADER_CLIENT_ID=abc", &tokens());

        assert_eq!(updated, "CTRADER_CLIENT_ID=abc\nCTRADER_ACCESS_TOKEN=new-access\nCTRADER_REFRESH_TOKEN=new-refresh\n");
    }

    #[test]
    fn dotenv_update_ignores_commented_token() {
        let updated = update_dotenv("# CTRADER_ACCESS_TOKEN=keep\n", &tokens());

        assert!(updated.starts_with("# CTRADER_ACCESS_TOKEN=keep\n"));
        assert!(updated.contains("\nCTRADER_ACCESS_TOKEN=new-access\n"));
    }

    #[test]
    fn dotenv_value_with_spaces_is_quoted_and_readable() {
        let odd = Tokens { access_token: "a b\"c".into(), refresh_token: "r".into() };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".env");

        TokenFile::DotEnv(path.clone()).persist(&odd).unwrap();
        let read: Vec<(String, String)> = dotenvy::from_path_iter(&path).unwrap().map(Result::unwrap).collect();

        assert!(read.contains(&(ACCESS_TOKEN_VAR.to_string(), "a b\"c".to_string())), "{read:?}");
        assert!(read.contains(&(REFRESH_TOKEN_VAR.to_string(), "r".to_string())), "{read:?}");
    }

    #[test]
    fn persist_dotenv_replaces_file_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".env");
        std::fs::write(&path, "CTRADER_ACCOUNT_ID=42\nCTRADER_REFRESH_TOKEN=old\n").unwrap();

        TokenFile::DotEnv(path.clone()).persist(&tokens()).unwrap();

        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "CTRADER_ACCOUNT_ID=42\nCTRADER_REFRESH_TOKEN=new-refresh\nCTRADER_ACCESS_TOKEN=new-access\n");
        let entries: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(entries.len(), 1);
    }

    #[cfg(unix)]
    #[test]
    fn persisted_file_is_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.json");

        TokenFile::Json(path.clone()).persist(&tokens()).unwrap();

        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn json_token_file_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.json");

        TokenFile::Json(path.clone()).persist(&tokens()).unwrap();

        assert_eq!(TokenFile::load_json(&path).unwrap(), tokens());
    }

    #[test]
    fn invalid_json_token_file_names_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.json");
        std::fs::write(&path, "{}").unwrap();

        let error = TokenFile::load_json(&path).unwrap_err().to_string();

        assert!(error.contains("tokens.json"), "{error}");
    }

    #[test]
    fn format_follows_extension() {
        assert!(matches!(TokenFile::for_path(Path::new("a/tokens.json")), TokenFile::Json(_)));
        assert!(matches!(TokenFile::for_path(Path::new(".env")), TokenFile::DotEnv(_)));
    }

    #[test]
    fn load_reads_both_formats() {
        let dir = tempfile::tempdir().unwrap();
        let env = TokenFile::for_path(&dir.path().join(".env"));
        let json = TokenFile::for_path(&dir.path().join("tokens.json"));
        assert_eq!(env.load().unwrap(), None);

        env.persist(&tokens()).unwrap();
        json.persist(&tokens()).unwrap();

        assert_eq!(env.load().unwrap(), Some(tokens()));
        assert_eq!(json.load().unwrap(), Some(tokens()));
    }

    #[test]
    fn load_needs_both_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".env");
        std::fs::write(&path, "CTRADER_ACCESS_TOKEN=a\n").unwrap();

        assert_eq!(TokenFile::for_path(&path).load().unwrap(), None);
    }

    #[test]
    fn debug_redacts_tokens() {
        let shown = format!("{:?}", tokens());

        assert!(!shown.contains("new-access"));
        assert!(!shown.contains("new-refresh"));
    }
}
