//! The ids a channel has delivered, kept in a file so a replay or a restart skips them.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;

/// An append-only set of delivered ids.
pub struct Ledger {
    ids: HashSet<String>,
    file: File,
}

impl Ledger {
    /// Opens (or creates) a ledger file and reads its ids.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut ids = HashSet::new();
        if path.exists() {
            for line in BufReader::new(File::open(path)?).lines() {
                let line = line?;
                if !line.is_empty() {
                    ids.insert(line);
                }
            }
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self { ids, file })
    }

    /// Whether `id` was delivered.
    pub fn contains(&self, id: &str) -> bool {
        self.ids.contains(id)
    }

    /// Records a delivered id (written through, so a crash loses at most the id in flight,
    /// which is then sent again: at least once, never silently dropped).
    pub fn record(&mut self, id: &str) -> std::io::Result<()> {
        writeln!(self.file, "{id}")?;
        self.file.flush()?;
        self.ids.insert(id.to_string());
        Ok(())
    }
}
