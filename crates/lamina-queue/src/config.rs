//! Event invoke configurations (`PutFunctionEventInvokeConfig` & co.): per function and
//! qualifier, the retry limit, the maximum event age and the destinations. Stored in the
//! queue's database beside the events they govern, and cached in memory, since the
//! dispatcher reads one for every finished event.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};

use rusqlite::{Connection, params};
use serde::{Deserialize, Serialize};

use crate::QueueError;
use crate::sqlite::open_connection;

/// AWS's defaults when a setting is absent.
pub const DEFAULT_MAXIMUM_RETRY_ATTEMPTS: u32 = 2;
pub const DEFAULT_MAXIMUM_EVENT_AGE_SECONDS: u32 = 21_600;

/// One stored configuration; `None` means "not set" (the default applies).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EventInvokeConfig {
    pub maximum_retry_attempts: Option<u32>,
    pub maximum_event_age_in_seconds: Option<u32>,
    pub on_success: Option<String>,
    pub on_failure: Option<String>,
    /// Seconds since the epoch, with fractions (the wire's `LastModified`).
    pub last_modified: f64,
}

impl EventInvokeConfig {
    pub fn retry_attempts(config: Option<&EventInvokeConfig>) -> u32 {
        config
            .and_then(|c| c.maximum_retry_attempts)
            .unwrap_or(DEFAULT_MAXIMUM_RETRY_ATTEMPTS)
    }

    pub fn event_age_seconds(config: Option<&EventInvokeConfig>) -> u32 {
        config
            .and_then(|c| c.maximum_event_age_in_seconds)
            .unwrap_or(DEFAULT_MAXIMUM_EVENT_AGE_SECONDS)
    }
}

type Key = (String, String);

/// Configurations by (function name, qualifier); `$LATEST` stands for "unqualified".
#[derive(Debug)]
pub struct ConfigStore {
    connection: Mutex<Connection>,
    cache: RwLock<BTreeMap<Key, EventInvokeConfig>>,
    path: PathBuf,
}

impl ConfigStore {
    pub fn open(path: &Path) -> Result<ConfigStore, QueueError> {
        let connection = open_connection(path)?;
        let mut cache = BTreeMap::new();
        {
            let db = |source| QueueError::Database {
                path: path.display().to_string(),
                source,
            };
            let mut statement = connection
                .prepare("SELECT function_name, qualifier, config FROM event_invoke_configs")
                .map_err(db)?;
            let rows = statement
                .query_map([], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, String>(2)?,
                    ))
                })
                .map_err(db)?;
            for row in rows {
                let (name, qualifier, json) = row.map_err(db)?;
                let config = serde_json::from_str(&json).map_err(|e| QueueError::Corrupt {
                    function: format!("{name}:{qualifier}"),
                    detail: e.to_string(),
                })?;
                cache.insert((name, qualifier), config);
            }
        }
        Ok(ConfigStore {
            connection: Mutex::new(connection),
            cache: RwLock::new(cache),
            path: path.to_owned(),
        })
    }

    fn db(&self, source: rusqlite::Error) -> QueueError {
        QueueError::Database {
            path: self.path.display().to_string(),
            source,
        }
    }

    pub fn get(&self, function_name: &str, qualifier: &str) -> Option<EventInvokeConfig> {
        self.cache
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(function_name.to_owned(), qualifier.to_owned()))
            .cloned()
    }

    /// Every configuration of a function, by qualifier.
    pub fn list(&self, function_name: &str) -> Vec<(String, EventInvokeConfig)> {
        self.cache
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|((name, _), _)| name == function_name)
            .map(|((_, qualifier), config)| (qualifier.clone(), config.clone()))
            .collect()
    }

    /// Stores a configuration durably (blocking: call it off the async workers).
    pub fn put(
        &self,
        function_name: &str,
        qualifier: &str,
        config: &EventInvokeConfig,
    ) -> Result<(), QueueError> {
        let json = serde_json::to_string(config).expect("configurations serialize");
        let connection = self.connection.lock().unwrap_or_else(|p| p.into_inner());
        connection
            .execute(
                "INSERT OR REPLACE INTO event_invoke_configs (function_name, qualifier, config) \
                 VALUES (?1, ?2, ?3)",
                params![function_name, qualifier, json],
            )
            .map_err(|e| self.db(e))?;
        self.cache
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                (function_name.to_owned(), qualifier.to_owned()),
                config.clone(),
            );
        Ok(())
    }

    /// Removes one configuration; `false` when there was none.
    pub fn delete(&self, function_name: &str, qualifier: &str) -> Result<bool, QueueError> {
        let connection = self.connection.lock().unwrap_or_else(|p| p.into_inner());
        let removed = connection
            .execute(
                "DELETE FROM event_invoke_configs WHERE function_name = ?1 AND qualifier = ?2",
                params![function_name, qualifier],
            )
            .map_err(|e| self.db(e))?;
        self.cache
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(function_name.to_owned(), qualifier.to_owned()));
        Ok(removed > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configurations_persist_and_list_per_function() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queue.db");
        let config = EventInvokeConfig {
            maximum_retry_attempts: Some(0),
            on_failure: Some("arn:aws:lambda:us-east-1:000000000000:function:dlq".to_owned()),
            last_modified: 1.5,
            ..EventInvokeConfig::default()
        };
        {
            let store = ConfigStore::open(&path).unwrap();
            store.put("f", "$LATEST", &config).unwrap();
            store.put("g", "$LATEST", &config).unwrap();
            assert!(store.delete("g", "$LATEST").unwrap());
            assert!(!store.delete("g", "$LATEST").unwrap());
        }
        let store = ConfigStore::open(&path).unwrap();
        assert_eq!(store.get("f", "$LATEST"), Some(config.clone()));
        assert_eq!(store.list("f"), vec![("$LATEST".to_owned(), config)]);
        assert!(store.list("g").is_empty());
        assert_eq!(EventInvokeConfig::retry_attempts(None), 2);
    }
}
