//! The embedded metadata backend: one SQLite database in WAL mode with
//! `synchronous=FULL`, so a returned write has reached the disk and survives both a
//! killed server and a lost machine.
//!
//! A version is stored as its JSON record plus the few columns queries need (order,
//! code hash, code size); the record stays the single source of truth for its contents.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Mutex;

use lamina_model::alias::Alias;
use lamina_model::layer::LayerVersion;
use lamina_model::{FunctionVersion, LATEST};
use rusqlite::{Connection, OptionalExtension, params};

use crate::{
    AccountUsage, ListPosition, MetadataStore, ProvisionedConfig, PublishSpec, Published,
    StoreError, StoredPolicy, VersionDeletion, version_order,
};

/// Schema migrations, applied in order; `PRAGMA user_version` counts those applied.
const MIGRATIONS: &[&str] = &[
    "
    CREATE TABLE functions (
        name        TEXT PRIMARY KEY,
        tags        TEXT NOT NULL DEFAULT '{}'
    );
    CREATE TABLE function_versions (
        function_name TEXT NOT NULL REFERENCES functions(name) ON DELETE CASCADE,
        version       TEXT NOT NULL,
        version_order INTEGER NOT NULL,
        code_sha256   TEXT NOT NULL,
        code_size     INTEGER NOT NULL,
        revision_id   TEXT NOT NULL,
        record        TEXT NOT NULL,
        PRIMARY KEY (function_name, version_order)
    );
    CREATE UNIQUE INDEX function_versions_by_name ON function_versions(function_name, version);
",
    // Published versions: the last number handed out (numbers are never reused) and the
    // `$LATEST` revision the last version was published from.
    "
    ALTER TABLE functions ADD COLUMN last_version INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE functions ADD COLUMN published_from TEXT;
",
    // Aliases; the versions they route to are columns so that deleting a version can
    // find the aliases that still use it.
    "
    CREATE TABLE aliases (
        function_name      TEXT NOT NULL REFERENCES functions(name) ON DELETE CASCADE,
        name               TEXT NOT NULL,
        function_version   TEXT NOT NULL,
        additional_version TEXT,
        revision_id        TEXT NOT NULL,
        record             TEXT NOT NULL,
        PRIMARY KEY (function_name, name)
    );
",
    // Layers: the counter outlives the versions so numbers are never reused. A function
    // version lists the digests of its layers in order (`layer_code`), so code GC keeps
    // the zips of layer versions deleted after functions referenced them.
    "
    CREATE TABLE layers (
        name         TEXT PRIMARY KEY,
        last_version INTEGER NOT NULL
    );
    CREATE TABLE layer_versions (
        layer_name  TEXT NOT NULL REFERENCES layers(name),
        version     INTEGER NOT NULL,
        code_sha256 TEXT NOT NULL,
        record      TEXT NOT NULL,
        PRIMARY KEY (layer_name, version)
    );
    ALTER TABLE function_versions ADD COLUMN layer_code TEXT NOT NULL DEFAULT '';
",
    // Resource-based policies. A function's own policy has the empty qualifier; those of
    // versions and aliases are deleted with them (and all of them with the function).
    "
    CREATE TABLE function_policies (
        function_name TEXT NOT NULL REFERENCES functions(name) ON DELETE CASCADE,
        qualifier     TEXT NOT NULL,
        revision_id   TEXT NOT NULL,
        document      TEXT NOT NULL,
        PRIMARY KEY (function_name, qualifier)
    );
    ALTER TABLE layer_versions ADD COLUMN policy TEXT;
    ALTER TABLE layer_versions ADD COLUMN policy_revision TEXT;
",
    // Reserved concurrency of a function (PutFunctionConcurrency).
    "
    ALTER TABLE functions ADD COLUMN reserved_concurrency INTEGER;
",
    // Provisioned concurrency configurations, per published version or alias.
    "
    CREATE TABLE provisioned_concurrency (
        function_name TEXT NOT NULL REFERENCES functions(name) ON DELETE CASCADE,
        qualifier     TEXT NOT NULL,
        requested     INTEGER NOT NULL,
        last_modified TEXT NOT NULL,
        PRIMARY KEY (function_name, qualifier)
    );
",
];

#[derive(Debug)]
pub struct SqliteStore {
    // rusqlite connections are not Sync; the control plane's write rate is tiny, so one
    // connection behind a mutex is simpler than a pool and fast enough.
    connection: Mutex<Connection>,
}

fn db(operation: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |source| StoreError::Database { operation, source }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let connection = Connection::open(path).map_err(db("open"))?;
        Self::configure(connection)
    }

    /// A private in-memory database, for tests.
    pub fn open_in_memory() -> Result<Self, StoreError> {
        Self::configure(Connection::open_in_memory().map_err(db("open"))?)
    }

    fn configure(mut connection: Connection) -> Result<Self, StoreError> {
        connection
            .pragma_update(None, "journal_mode", "WAL")
            .map_err(db("enable WAL"))?;
        connection
            .pragma_update(None, "synchronous", "FULL")
            .map_err(db("set synchronous"))?;
        connection
            .pragma_update(None, "foreign_keys", "ON")
            .map_err(db("enable foreign keys"))?;
        connection
            .busy_timeout(std::time::Duration::from_secs(5))
            .map_err(db("set busy timeout"))?;
        let applied: i64 = connection
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(db("read schema version"))?;
        for (index, migration) in MIGRATIONS.iter().enumerate().skip(applied as usize) {
            let tx = connection.transaction().map_err(db("migrate"))?;
            tx.execute_batch(migration).map_err(db("migrate"))?;
            tx.pragma_update(None, "user_version", index as i64 + 1)
                .map_err(db("migrate"))?;
            tx.commit().map_err(db("migrate"))?;
        }
        Ok(SqliteStore {
            connection: Mutex::new(connection),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written (transactions
        // roll back), so a poisoned lock is still safe to use.
        self.connection
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn encode(version: &FunctionVersion) -> String {
    serde_json::to_string(version).expect("function records always serialize")
}

fn decode(key: &str, record: &str) -> Result<FunctionVersion, StoreError> {
    serde_json::from_str(record).map_err(|e| StoreError::Corrupt {
        key: key.to_owned(),
        detail: e.to_string(),
    })
}

fn decode_tags(key: &str, tags: &str) -> Result<BTreeMap<String, String>, StoreError> {
    serde_json::from_str(tags).map_err(|e| StoreError::Corrupt {
        key: key.to_owned(),
        detail: e.to_string(),
    })
}

/// The `layer_code` column: the version's layer digests, in order, space-separated.
fn layer_code(version: &FunctionVersion) -> String {
    version
        .settings
        .layers
        .iter()
        .map(|layer| layer.sha256_hex.as_str())
        .collect::<Vec<_>>()
        .join(" ")
}

fn insert_version(tx: &Connection, version: &FunctionVersion) -> rusqlite::Result<usize> {
    tx.execute(
        "INSERT INTO function_versions
             (function_name, version, version_order, code_sha256, code_size, revision_id, record,
              layer_code)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            version.function_name,
            version.version,
            version_order(&version.version),
            version.code.sha256_hex,
            version.code.size as i64,
            version.revision_id,
            encode(version),
            layer_code(version),
        ],
    )
}

fn decode_layer(key: &str, record: &str) -> Result<LayerVersion, StoreError> {
    serde_json::from_str(record).map_err(|e| StoreError::Corrupt {
        key: key.to_owned(),
        detail: e.to_string(),
    })
}

fn layer_versions_where(
    connection: &Connection,
    filter: &str,
    args: &[&dyn rusqlite::ToSql],
) -> Result<Vec<LayerVersion>, StoreError> {
    let mut statement = connection
        .prepare_cached(&format!(
            "SELECT layer_name, version, record FROM layer_versions {filter}
              ORDER BY layer_name, version DESC"
        ))
        .map_err(db("list layer versions"))?;
    let rows = statement
        .query_map(args, |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, String>(2)?,
            ))
        })
        .map_err(db("list layer versions"))?;
    let mut versions = Vec::new();
    for row in rows {
        let (name, version, record) = row.map_err(db("list layer versions"))?;
        versions.push(decode_layer(&format!("layer {name}:{version}"), &record)?);
    }
    Ok(versions)
}

fn get_version_in(
    tx: &Connection,
    function_name: &str,
    version: &str,
) -> Result<Option<FunctionVersion>, StoreError> {
    let record: Option<String> = tx
        .query_row(
            "SELECT record FROM function_versions WHERE function_name = ?1 AND version = ?2",
            params![function_name, version],
            |row| row.get(0),
        )
        .optional()
        .map_err(db("get version"))?;
    record
        .map(|r| decode(&format!("{function_name}:{version}"), &r))
        .transpose()
}

fn decode_alias(key: &str, record: &str) -> Result<Alias, StoreError> {
    serde_json::from_str(record).map_err(|e| StoreError::Corrupt {
        key: key.to_owned(),
        detail: e.to_string(),
    })
}

fn function_exists(tx: &Connection, name: &str) -> rusqlite::Result<bool> {
    Ok(tx
        .query_row(
            "SELECT 1 FROM functions WHERE name = ?1",
            params![name],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

/// Every version `alias` routes to must exist (checked inside the writing transaction,
/// so a concurrent version deletion cannot leave the alias dangling).
fn check_alias_targets(tx: &Connection, alias: &Alias) -> Result<(), StoreError> {
    for version in alias.versions() {
        let exists = tx
            .query_row(
                "SELECT 1 FROM function_versions WHERE function_name = ?1 AND version = ?2",
                params![alias.function_name, version],
                |_| Ok(()),
            )
            .optional()
            .map_err(db("check alias versions"))?
            .is_some();
        if !exists {
            return Err(StoreError::VersionNotFound {
                name: alias.function_name.clone(),
                version: version.to_owned(),
            });
        }
    }
    Ok(())
}

fn write_alias(tx: &Connection, alias: &Alias, insert: bool) -> rusqlite::Result<usize> {
    let record = serde_json::to_string(alias).expect("alias records always serialize");
    let additional = alias.additional.as_ref().map(|a| a.version.as_str());
    if insert {
        tx.execute(
            "INSERT INTO aliases
                 (function_name, name, function_version, additional_version, revision_id, record)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO NOTHING",
            params![
                alias.function_name,
                alias.name,
                alias.function_version,
                additional,
                alias.revision_id,
                record
            ],
        )
    } else {
        tx.execute(
            "UPDATE aliases SET function_version = ?3, additional_version = ?4,
                    revision_id = ?5, record = ?6
              WHERE function_name = ?1 AND name = ?2",
            params![
                alias.function_name,
                alias.name,
                alias.function_version,
                additional,
                alias.revision_id,
                record
            ],
        )
    }
}

fn write_latest(tx: &Connection, latest: &FunctionVersion) -> rusqlite::Result<usize> {
    tx.execute(
        "UPDATE function_versions
            SET code_sha256 = ?3, code_size = ?4, revision_id = ?5, record = ?6, layer_code = ?7
          WHERE function_name = ?1 AND version = ?2",
        params![
            latest.function_name,
            LATEST,
            latest.code.sha256_hex,
            latest.code.size as i64,
            latest.revision_id,
            encode(latest),
            layer_code(latest),
        ],
    )
}

/// Publishes `latest` (as stored in this transaction) under the next number, unless it
/// is unchanged since the last publish.
fn publish_in(
    tx: &Connection,
    latest: &FunctionVersion,
    spec: &PublishSpec,
) -> Result<Published, StoreError> {
    let name = &latest.function_name;
    let (last_version, published_from): (i64, Option<String>) = tx
        .query_row(
            "SELECT last_version, published_from FROM functions WHERE name = ?1",
            params![name],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .map_err(db("publish version"))?;
    if last_version > 0
        && published_from.as_deref() == Some(latest.revision_id.as_str())
        && let Some(existing) = get_version_in(tx, name, &last_version.to_string())?
    {
        return Ok(Published {
            version: existing,
            created: false,
        });
    }
    let number = last_version + 1;
    let mut version = latest.clone();
    version.version = number.to_string();
    version.revision_id = spec.version_revision_id.clone();
    version.last_modified = spec.last_modified.clone();
    if let Some(description) = &spec.description {
        version.settings.description = description.clone();
    }
    insert_version(tx, &version).map_err(db("publish version"))?;
    let moved = FunctionVersion {
        revision_id: spec.latest_revision_id.clone(),
        ..latest.clone()
    };
    write_latest(tx, &moved).map_err(db("publish version"))?;
    tx.execute(
        "UPDATE functions SET last_version = ?2, published_from = ?3 WHERE name = ?1",
        params![name, number, spec.latest_revision_id],
    )
    .map_err(db("publish version"))?;
    Ok(Published {
        version,
        created: true,
    })
}

impl MetadataStore for SqliteStore {
    fn create_function(
        &self,
        latest: &FunctionVersion,
        tags: &BTreeMap<String, String>,
        publish: Option<&PublishSpec>,
    ) -> Result<Option<Published>, StoreError> {
        let mut connection = self.lock();
        let tx = connection.transaction().map_err(db("create function"))?;
        let inserted = tx
            .execute(
                "INSERT INTO functions (name, tags) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                params![
                    latest.function_name,
                    serde_json::to_string(tags).expect("tags serialize")
                ],
            )
            .map_err(db("create function"))?;
        if inserted == 0 {
            return Err(StoreError::AlreadyExists {
                name: latest.function_name.clone(),
            });
        }
        insert_version(&tx, latest).map_err(db("create function"))?;
        let published = publish
            .map(|spec| publish_in(&tx, latest, spec))
            .transpose()?;
        tx.commit().map_err(db("create function"))?;
        Ok(published)
    }

    fn get_version(
        &self,
        function_name: &str,
        version: &str,
    ) -> Result<Option<FunctionVersion>, StoreError> {
        get_version_in(&self.lock(), function_name, version)
    }

    fn replace_latest(
        &self,
        latest: &FunctionVersion,
        expected_revision_id: &str,
        publish: Option<&PublishSpec>,
    ) -> Result<Option<Published>, StoreError> {
        let mut connection = self.lock();
        let tx = connection.transaction().map_err(db("update function"))?;
        let current: Option<String> = tx
            .query_row(
                "SELECT revision_id FROM function_versions WHERE function_name = ?1 AND version = ?2",
                params![latest.function_name, LATEST],
                |row| row.get(0),
            )
            .optional()
            .map_err(db("update function"))?;
        match current {
            None => {
                return Err(StoreError::NotFound {
                    name: latest.function_name.clone(),
                });
            }
            Some(revision) if revision != expected_revision_id => {
                return Err(StoreError::RevisionMismatch {
                    name: latest.function_name.clone(),
                    expected_revision_id: expected_revision_id.to_owned(),
                });
            }
            Some(_) => {}
        }
        write_latest(&tx, latest).map_err(db("update function"))?;
        let published = publish
            .map(|spec| publish_in(&tx, latest, spec))
            .transpose()?;
        tx.commit().map_err(db("update function"))?;
        Ok(published)
    }

    fn publish_version(
        &self,
        function_name: &str,
        expected_latest_revision_id: &str,
        spec: &PublishSpec,
    ) -> Result<Published, StoreError> {
        let mut connection = self.lock();
        let tx = connection.transaction().map_err(db("publish version"))?;
        let latest =
            get_version_in(&tx, function_name, LATEST)?.ok_or_else(|| StoreError::NotFound {
                name: function_name.to_owned(),
            })?;
        if latest.revision_id != expected_latest_revision_id {
            return Err(StoreError::RevisionMismatch {
                name: function_name.to_owned(),
                expected_revision_id: expected_latest_revision_id.to_owned(),
            });
        }
        let published = publish_in(&tx, &latest, spec)?;
        tx.commit().map_err(db("publish version"))?;
        Ok(published)
    }

    fn list_function_versions(
        &self,
        function_name: &str,
        after_order: i64,
        limit: usize,
    ) -> Result<Option<Vec<FunctionVersion>>, StoreError> {
        let connection = self.lock();
        let exists = connection
            .query_row(
                "SELECT 1 FROM functions WHERE name = ?1",
                params![function_name],
                |_| Ok(()),
            )
            .optional()
            .map_err(db("list versions"))?
            .is_some();
        if !exists {
            return Ok(None);
        }
        let mut statement = connection
            .prepare_cached(
                "SELECT version, record FROM function_versions
                  WHERE function_name = ?1 AND version_order > ?2
                  ORDER BY version_order
                  LIMIT ?3",
            )
            .map_err(db("list versions"))?;
        let rows = statement
            .query_map(params![function_name, after_order, limit as i64], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
            })
            .map_err(db("list versions"))?;
        let mut versions = Vec::new();
        for row in rows {
            let (version, record) = row.map_err(db("list versions"))?;
            versions.push(decode(&format!("{function_name}:{version}"), &record)?);
        }
        Ok(Some(versions))
    }

    fn delete_version(
        &self,
        function_name: &str,
        version: &str,
    ) -> Result<VersionDeletion, StoreError> {
        let mut connection = self.lock();
        let tx = connection.transaction().map_err(db("delete version"))?;
        let exists = tx
            .query_row(
                "SELECT 1 FROM functions WHERE name = ?1",
                params![function_name],
                |_| Ok(()),
            )
            .optional()
            .map_err(db("delete version"))?
            .is_some();
        if !exists {
            return Ok(VersionDeletion::NoSuchFunction);
        }
        let aliases: Vec<String> = {
            let mut statement = tx
                .prepare(
                    "SELECT name FROM aliases WHERE function_name = ?1
                        AND (function_version = ?2 OR additional_version = ?2)
                      ORDER BY name",
                )
                .map_err(db("delete version"))?;
            statement
                .query_map(params![function_name, version], |row| row.get(0))
                .map_err(db("delete version"))?
                .collect::<Result<_, _>>()
                .map_err(db("delete version"))?
        };
        if !aliases.is_empty() {
            return Err(StoreError::VersionInUse {
                name: function_name.to_owned(),
                version: version.to_owned(),
                aliases,
            });
        }
        let deleted = tx
            .execute(
                "DELETE FROM function_versions WHERE function_name = ?1 AND version = ?2
                    AND version <> '$LATEST'",
                params![function_name, version],
            )
            .map_err(db("delete version"))?;
        tx.execute(
            "DELETE FROM function_policies WHERE function_name = ?1 AND qualifier = ?2",
            params![function_name, version],
        )
        .map_err(db("delete version"))?;
        tx.commit().map_err(db("delete version"))?;
        Ok(if deleted > 0 {
            VersionDeletion::Deleted
        } else {
            VersionDeletion::NoSuchVersion
        })
    }

    fn list_versions(
        &self,
        after: Option<&ListPosition>,
        limit: usize,
        all_versions: bool,
    ) -> Result<Vec<FunctionVersion>, StoreError> {
        let connection = self.lock();
        let (after_name, after_order) = after
            .map(|p| (p.function_name.as_str(), p.version_order))
            .unwrap_or(("", -1));
        let mut statement = connection
            .prepare_cached(
                "SELECT function_name, version, record FROM function_versions
                  WHERE (function_name, version_order) > (?1, ?2)
                    AND (?3 OR version = '$LATEST')
                  ORDER BY function_name, version_order
                  LIMIT ?4",
            )
            .map_err(db("list functions"))?;
        let rows = statement
            .query_map(
                params![after_name, after_order, all_versions, limit as i64],
                |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, String>(2)?,
                    ))
                },
            )
            .map_err(db("list functions"))?;
        let mut versions = Vec::new();
        for row in rows {
            let (name, version, record) = row.map_err(db("list functions"))?;
            versions.push(decode(&format!("{name}:{version}"), &record)?);
        }
        Ok(versions)
    }

    fn create_alias(&self, alias: &Alias) -> Result<(), StoreError> {
        let mut connection = self.lock();
        let tx = connection.transaction().map_err(db("create alias"))?;
        if !function_exists(&tx, &alias.function_name).map_err(db("create alias"))? {
            return Err(StoreError::NotFound {
                name: alias.function_name.clone(),
            });
        }
        check_alias_targets(&tx, alias)?;
        if write_alias(&tx, alias, true).map_err(db("create alias"))? == 0 {
            return Err(StoreError::AliasAlreadyExists {
                name: alias.function_name.clone(),
                alias: alias.name.clone(),
            });
        }
        tx.commit().map_err(db("create alias"))
    }

    fn get_alias(&self, function_name: &str, alias: &str) -> Result<Option<Alias>, StoreError> {
        let connection = self.lock();
        let record: Option<String> = connection
            .query_row(
                "SELECT record FROM aliases WHERE function_name = ?1 AND name = ?2",
                params![function_name, alias],
                |row| row.get(0),
            )
            .optional()
            .map_err(db("get alias"))?;
        record
            .map(|r| decode_alias(&format!("{function_name}:{alias}"), &r))
            .transpose()
    }

    fn update_alias(&self, alias: &Alias, expected_revision_id: &str) -> Result<(), StoreError> {
        let mut connection = self.lock();
        let tx = connection.transaction().map_err(db("update alias"))?;
        let current: Option<String> = tx
            .query_row(
                "SELECT revision_id FROM aliases WHERE function_name = ?1 AND name = ?2",
                params![alias.function_name, alias.name],
                |row| row.get(0),
            )
            .optional()
            .map_err(db("update alias"))?;
        match current {
            None => {
                return Err(StoreError::AliasNotFound {
                    name: alias.function_name.clone(),
                    alias: alias.name.clone(),
                });
            }
            Some(revision) if revision != expected_revision_id => {
                return Err(StoreError::AliasRevisionMismatch {
                    name: alias.function_name.clone(),
                    alias: alias.name.clone(),
                    expected_revision_id: expected_revision_id.to_owned(),
                });
            }
            Some(_) => {}
        }
        check_alias_targets(&tx, alias)?;
        write_alias(&tx, alias, false).map_err(db("update alias"))?;
        tx.commit().map_err(db("update alias"))
    }

    fn delete_alias(&self, function_name: &str, alias: &str) -> Result<bool, StoreError> {
        let mut connection = self.lock();
        let tx = connection.transaction().map_err(db("delete alias"))?;
        let deleted = tx
            .execute(
                "DELETE FROM aliases WHERE function_name = ?1 AND name = ?2",
                params![function_name, alias],
            )
            .map_err(db("delete alias"))?;
        tx.execute(
            "DELETE FROM function_policies WHERE function_name = ?1 AND qualifier = ?2",
            params![function_name, alias],
        )
        .map_err(db("delete alias"))?;
        tx.commit().map_err(db("delete alias"))?;
        Ok(deleted > 0)
    }

    fn get_function_policy(
        &self,
        function_name: &str,
        qualifier: &str,
    ) -> Result<Option<StoredPolicy>, StoreError> {
        let connection = self.lock();
        connection
            .query_row(
                "SELECT revision_id, document FROM function_policies
                  WHERE function_name = ?1 AND qualifier = ?2",
                params![function_name, qualifier],
                |row| {
                    Ok(StoredPolicy {
                        revision_id: row.get(0)?,
                        document: row.get(1)?,
                    })
                },
            )
            .optional()
            .map_err(db("get policy"))
    }

    fn put_function_policy(
        &self,
        function_name: &str,
        qualifier: &str,
        expected: Option<&str>,
        policy: Option<&StoredPolicy>,
    ) -> Result<(), StoreError> {
        let mut connection = self.lock();
        let tx = connection.transaction().map_err(db("put policy"))?;
        // The resource the policy belongs to must (still) exist.
        if !function_exists(&tx, function_name).map_err(db("put policy"))? {
            return Err(StoreError::NotFound {
                name: function_name.to_owned(),
            });
        }
        if !qualifier.is_empty() {
            let is_version = lamina_model::arn::is_version_number(qualifier);
            let query = if is_version {
                "SELECT 1 FROM function_versions WHERE function_name = ?1 AND version = ?2"
            } else {
                "SELECT 1 FROM aliases WHERE function_name = ?1 AND name = ?2"
            };
            let exists = tx
                .query_row(query, params![function_name, qualifier], |_| Ok(()))
                .optional()
                .map_err(db("put policy"))?
                .is_some();
            if !exists {
                return Err(if is_version {
                    StoreError::VersionNotFound {
                        name: function_name.to_owned(),
                        version: qualifier.to_owned(),
                    }
                } else {
                    StoreError::AliasNotFound {
                        name: function_name.to_owned(),
                        alias: qualifier.to_owned(),
                    }
                });
            }
        }
        let current: Option<String> = tx
            .query_row(
                "SELECT revision_id FROM function_policies
                  WHERE function_name = ?1 AND qualifier = ?2",
                params![function_name, qualifier],
                |row| row.get(0),
            )
            .optional()
            .map_err(db("put policy"))?;
        if current.as_deref() != expected {
            return Err(StoreError::PolicyRevisionMismatch {
                resource: format!("{function_name}:{qualifier}"),
                expected_revision_id: expected.map(str::to_owned),
            });
        }
        match policy {
            Some(policy) => tx.execute(
                "INSERT INTO function_policies (function_name, qualifier, revision_id, document)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (function_name, qualifier)
                 DO UPDATE SET revision_id = ?3, document = ?4",
                params![
                    function_name,
                    qualifier,
                    policy.revision_id,
                    policy.document
                ],
            ),
            None => tx.execute(
                "DELETE FROM function_policies WHERE function_name = ?1 AND qualifier = ?2",
                params![function_name, qualifier],
            ),
        }
        .map_err(db("put policy"))?;
        tx.commit().map_err(db("put policy"))
    }

    fn get_layer_version_policy(
        &self,
        layer_name: &str,
        version: u64,
    ) -> Result<Option<StoredPolicy>, StoreError> {
        let connection = self.lock();
        let row: Option<(Option<String>, Option<String>)> = connection
            .query_row(
                "SELECT policy_revision, policy FROM layer_versions
                  WHERE layer_name = ?1 AND version = ?2",
                params![layer_name, version as i64],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()
            .map_err(db("get layer policy"))?;
        match row {
            None => Err(StoreError::LayerVersionNotFound {
                name: layer_name.to_owned(),
                version,
            }),
            Some((Some(revision_id), Some(document))) => Ok(Some(StoredPolicy {
                revision_id,
                document,
            })),
            Some(_) => Ok(None),
        }
    }

    fn put_layer_version_policy(
        &self,
        layer_name: &str,
        version: u64,
        expected: Option<&str>,
        policy: Option<&StoredPolicy>,
    ) -> Result<(), StoreError> {
        let connection = self.lock();
        let updated = connection
            .execute(
                "UPDATE layer_versions SET policy_revision = ?4, policy = ?5
                  WHERE layer_name = ?1 AND version = ?2 AND policy_revision IS ?3",
                params![
                    layer_name,
                    version as i64,
                    expected,
                    policy.map(|p| &p.revision_id),
                    policy.map(|p| &p.document),
                ],
            )
            .map_err(db("put layer policy"))?;
        if updated == 1 {
            return Ok(());
        }
        // Nothing matched: the version is gone, or its policy moved on.
        let exists = connection
            .query_row(
                "SELECT 1 FROM layer_versions WHERE layer_name = ?1 AND version = ?2",
                params![layer_name, version as i64],
                |_| Ok(()),
            )
            .optional()
            .map_err(db("put layer policy"))?
            .is_some();
        Err(if exists {
            StoreError::PolicyRevisionMismatch {
                resource: format!("layer {layer_name}:{version}"),
                expected_revision_id: expected.map(str::to_owned),
            }
        } else {
            StoreError::LayerVersionNotFound {
                name: layer_name.to_owned(),
                version,
            }
        })
    }

    fn list_aliases(
        &self,
        function_name: &str,
        version: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Option<Vec<Alias>>, StoreError> {
        let connection = self.lock();
        if !function_exists(&connection, function_name).map_err(db("list aliases"))? {
            return Ok(None);
        }
        let mut statement = connection
            .prepare_cached(
                "SELECT name, record FROM aliases
                  WHERE function_name = ?1 AND name > ?2
                    AND (?3 IS NULL OR function_version = ?3)
                  ORDER BY name
                  LIMIT ?4",
            )
            .map_err(db("list aliases"))?;
        let rows = statement
            .query_map(
                params![function_name, after.unwrap_or(""), version, limit as i64],
                |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?)),
            )
            .map_err(db("list aliases"))?;
        let mut aliases = Vec::new();
        for row in rows {
            let (name, record) = row.map_err(db("list aliases"))?;
            aliases.push(decode_alias(&format!("{function_name}:{name}"), &record)?);
        }
        Ok(Some(aliases))
    }

    fn delete_function(&self, function_name: &str) -> Result<bool, StoreError> {
        let connection = self.lock();
        let deleted = connection
            .execute(
                "DELETE FROM functions WHERE name = ?1",
                params![function_name],
            )
            .map_err(db("delete function"))?;
        Ok(deleted > 0)
    }

    fn tags(&self, function_name: &str) -> Result<Option<BTreeMap<String, String>>, StoreError> {
        let connection = self.lock();
        let tags: Option<String> = connection
            .query_row(
                "SELECT tags FROM functions WHERE name = ?1",
                params![function_name],
                |row| row.get(0),
            )
            .optional()
            .map_err(db("read tags"))?;
        tags.map(|t| decode_tags(function_name, &t)).transpose()
    }

    fn update_tags(
        &self,
        function_name: &str,
        set: &BTreeMap<String, String>,
        remove: &[String],
    ) -> Result<bool, StoreError> {
        let mut connection = self.lock();
        let tx = connection.transaction().map_err(db("update tags"))?;
        let tags: Option<String> = tx
            .query_row(
                "SELECT tags FROM functions WHERE name = ?1",
                params![function_name],
                |row| row.get(0),
            )
            .optional()
            .map_err(db("update tags"))?;
        let Some(tags) = tags else {
            return Ok(false);
        };
        let mut tags = decode_tags(function_name, &tags)?;
        for key in remove {
            tags.remove(key);
        }
        tags.extend(set.iter().map(|(k, v)| (k.clone(), v.clone())));
        tx.execute(
            "UPDATE functions SET tags = ?2 WHERE name = ?1",
            params![
                function_name,
                serde_json::to_string(&tags).expect("tags serialize")
            ],
        )
        .map_err(db("update tags"))?;
        tx.commit().map_err(db("update tags"))?;
        Ok(true)
    }

    fn set_reserved_concurrency(
        &self,
        function_name: &str,
        reserved: Option<u32>,
        account_limit: u32,
        minimum_unreserved: u32,
    ) -> Result<bool, StoreError> {
        let max_total_reserved = account_limit.saturating_sub(minimum_unreserved);
        let mut connection = self.lock();
        let tx = connection
            .transaction()
            .map_err(db("set reserved concurrency"))?;
        let exists: bool = tx
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM functions WHERE name = ?1)",
                params![function_name],
                |row| row.get(0),
            )
            .map_err(db("set reserved concurrency"))?;
        if !exists {
            return Ok(false);
        }
        if let Some(reserved) = reserved {
            let others: i64 = tx
                .query_row(
                    "SELECT COALESCE(SUM(reserved_concurrency), 0) FROM functions WHERE name != ?1",
                    params![function_name],
                    |row| row.get(0),
                )
                .map_err(db("set reserved concurrency"))?;
            if others + i64::from(reserved) > i64::from(max_total_reserved) {
                return Err(StoreError::ReservationTooLarge {
                    name: function_name.to_owned(),
                    minimum_unreserved,
                });
            }
        }
        tx.execute(
            "UPDATE functions SET reserved_concurrency = ?2 WHERE name = ?1",
            params![function_name, reserved],
        )
        .map_err(db("set reserved concurrency"))?;
        tx.commit().map_err(db("set reserved concurrency"))?;
        Ok(true)
    }

    fn reserved_concurrency(&self, function_name: &str) -> Result<Option<Option<u32>>, StoreError> {
        let connection = self.lock();
        connection
            .query_row(
                "SELECT reserved_concurrency FROM functions WHERE name = ?1",
                params![function_name],
                |row| row.get::<_, Option<u32>>(0),
            )
            .optional()
            .map_err(db("read reserved concurrency"))
    }

    fn put_provisioned(&self, config: &ProvisionedConfig) -> Result<bool, StoreError> {
        let connection = self.lock();
        let written = connection
            .execute(
                "INSERT INTO provisioned_concurrency (function_name, qualifier, requested, last_modified)
                 SELECT ?1, ?2, ?3, ?4 WHERE EXISTS (SELECT 1 FROM functions WHERE name = ?1)
                 ON CONFLICT (function_name, qualifier)
                 DO UPDATE SET requested = excluded.requested, last_modified = excluded.last_modified",
                params![
                    config.function_name,
                    config.qualifier,
                    config.requested,
                    config.last_modified
                ],
            )
            .map_err(db("put provisioned concurrency"))?;
        Ok(written > 0)
    }

    fn delete_provisioned(&self, function_name: &str, qualifier: &str) -> Result<bool, StoreError> {
        let connection = self.lock();
        let deleted = connection
            .execute(
                "DELETE FROM provisioned_concurrency WHERE function_name = ?1 AND qualifier = ?2",
                params![function_name, qualifier],
            )
            .map_err(db("delete provisioned concurrency"))?;
        Ok(deleted > 0)
    }

    fn provisioned(
        &self,
        function_name: Option<&str>,
    ) -> Result<Vec<ProvisionedConfig>, StoreError> {
        let connection = self.lock();
        let mut statement = connection
            .prepare_cached(
                "SELECT function_name, qualifier, requested, last_modified
                   FROM provisioned_concurrency
                  WHERE ?1 IS NULL OR function_name = ?1
                  ORDER BY function_name, qualifier",
            )
            .map_err(db("list provisioned concurrency"))?;
        let rows = statement
            .query_map(params![function_name], |row| {
                Ok(ProvisionedConfig {
                    function_name: row.get(0)?,
                    qualifier: row.get(1)?,
                    requested: row.get(2)?,
                    last_modified: row.get(3)?,
                })
            })
            .map_err(db("list provisioned concurrency"))?;
        rows.collect::<Result<_, _>>()
            .map_err(db("list provisioned concurrency"))
    }

    fn reservations(&self) -> Result<Vec<(String, u32)>, StoreError> {
        let connection = self.lock();
        let mut statement = connection
            .prepare_cached(
                "SELECT name, reserved_concurrency FROM functions
                  WHERE reserved_concurrency IS NOT NULL ORDER BY name",
            )
            .map_err(db("list reservations"))?;
        let rows = statement
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .map_err(db("list reservations"))?;
        rows.collect::<Result<_, _>>()
            .map_err(db("list reservations"))
    }

    fn account_usage(&self) -> Result<AccountUsage, StoreError> {
        let connection = self.lock();
        connection
            .query_row(
                "SELECT (SELECT COUNT(*) FROM functions),
                        (SELECT COALESCE(SUM(code_size), 0) FROM function_versions)
                      + (SELECT COALESCE(SUM(json_extract(record, '$.code.size')), 0)
                           FROM layer_versions)",
                [],
                |row| {
                    Ok(AccountUsage {
                        function_count: row.get::<_, i64>(0)? as u64,
                        total_code_size: row.get::<_, i64>(1)? as u64,
                    })
                },
            )
            .map_err(db("account usage"))
    }

    fn publish_layer_version(&self, layer: &LayerVersion) -> Result<LayerVersion, StoreError> {
        let mut connection = self.lock();
        let tx = connection
            .transaction()
            .map_err(db("publish layer version"))?;
        let number: i64 = tx
            .query_row(
                "INSERT INTO layers (name, last_version) VALUES (?1, 1)
                 ON CONFLICT (name) DO UPDATE SET last_version = last_version + 1
                 RETURNING last_version",
                params![layer.layer_name],
                |row| row.get(0),
            )
            .map_err(db("publish layer version"))?;
        let published = LayerVersion {
            version: number as u64,
            ..layer.clone()
        };
        tx.execute(
            "INSERT INTO layer_versions (layer_name, version, code_sha256, record)
             VALUES (?1, ?2, ?3, ?4)",
            params![
                published.layer_name,
                number,
                published.code.sha256_hex,
                serde_json::to_string(&published).expect("layer records always serialize"),
            ],
        )
        .map_err(db("publish layer version"))?;
        tx.commit().map_err(db("publish layer version"))?;
        Ok(published)
    }

    fn get_layer_version(
        &self,
        layer_name: &str,
        version: u64,
    ) -> Result<Option<LayerVersion>, StoreError> {
        let connection = self.lock();
        let record: Option<String> = connection
            .query_row(
                "SELECT record FROM layer_versions WHERE layer_name = ?1 AND version = ?2",
                params![layer_name, version as i64],
                |row| row.get(0),
            )
            .optional()
            .map_err(db("get layer version"))?;
        record
            .map(|r| decode_layer(&format!("layer {layer_name}:{version}"), &r))
            .transpose()
    }

    fn list_layer_versions(&self, layer_name: &str) -> Result<Vec<LayerVersion>, StoreError> {
        layer_versions_where(&self.lock(), "WHERE layer_name = ?1", &[&layer_name])
    }

    fn list_all_layer_versions(&self) -> Result<Vec<LayerVersion>, StoreError> {
        layer_versions_where(&self.lock(), "", &[])
    }

    fn delete_layer_version(&self, layer_name: &str, version: u64) -> Result<bool, StoreError> {
        let connection = self.lock();
        let deleted = connection
            .execute(
                "DELETE FROM layer_versions WHERE layer_name = ?1 AND version = ?2",
                params![layer_name, version as i64],
            )
            .map_err(db("delete layer version"))?;
        Ok(deleted > 0)
    }

    fn referenced_code(&self) -> Result<HashSet<String>, StoreError> {
        let connection = self.lock();
        let mut statement = connection
            .prepare(
                "SELECT code_sha256, layer_code FROM function_versions
                 UNION SELECT code_sha256, '' FROM layer_versions",
            )
            .map_err(db("list code"))?;
        let rows = statement
            .query_map([], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
            })
            .map_err(db("list code"))?;
        let mut referenced = HashSet::new();
        for row in rows {
            let (code, layers) = row.map_err(db("list code"))?;
            referenced.insert(code);
            referenced.extend(layers.split_whitespace().map(str::to_owned));
        }
        Ok(referenced)
    }

    fn referenced_layer_lists(&self) -> Result<HashSet<Vec<String>>, StoreError> {
        let connection = self.lock();
        let mut statement = connection
            .prepare("SELECT DISTINCT layer_code FROM function_versions WHERE layer_code <> ''")
            .map_err(db("list layer code"))?;
        let rows = statement
            .query_map([], |row| row.get::<_, String>(0))
            .map_err(db("list layer code"))?;
        let mut lists = HashSet::new();
        for row in rows {
            let list = row.map_err(db("list layer code"))?;
            lists.insert(list.split_whitespace().map(str::to_owned).collect());
        }
        Ok(lists)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lamina_model::function::{CodeRef, FunctionSettings};

    fn version(name: &str, revision: &str) -> FunctionVersion {
        FunctionVersion {
            function_name: name.to_owned(),
            version: LATEST.to_owned(),
            settings: FunctionSettings::defaults(name, "arn:aws:iam::123456789012:role/r".into()),
            code: CodeRef {
                sha256_hex: format!("{:0>64}", name.len()),
                size: 10,
                unzipped_size: 20,
            },
            architecture: "x86_64".into(),
            revision_id: revision.to_owned(),
            last_modified: "2024-05-01T12:34:56.789+0000".into(),
        }
    }

    #[test]
    fn create_get_and_conflict() {
        let store = SqliteStore::open_in_memory().unwrap();
        let f = version("f", "r1");
        store.create_function(&f, &BTreeMap::new(), None).unwrap();
        assert_eq!(store.get_version("f", LATEST).unwrap(), Some(f.clone()));
        assert!(matches!(
            store.create_function(&f, &BTreeMap::new(), None),
            Err(StoreError::AlreadyExists { .. })
        ));
        assert_eq!(store.get_version("g", LATEST).unwrap(), None);
    }

    #[test]
    fn replace_latest_is_compare_and_swap() {
        let store = SqliteStore::open_in_memory().unwrap();
        store
            .create_function(&version("f", "r1"), &BTreeMap::new(), None)
            .unwrap();
        let mut next = version("f", "r2");
        next.settings.memory_mb = 256;
        store.replace_latest(&next, "r1", None).unwrap();
        assert_eq!(
            store
                .get_version("f", LATEST)
                .unwrap()
                .unwrap()
                .settings
                .memory_mb,
            256
        );
        assert!(matches!(
            store.replace_latest(&version("f", "r3"), "r1", None),
            Err(StoreError::RevisionMismatch { .. })
        ));
        assert!(matches!(
            store.replace_latest(&version("missing", "r3"), "r1", None),
            Err(StoreError::NotFound { .. })
        ));
    }

    #[test]
    fn listing_pages_in_name_order() {
        let store = SqliteStore::open_in_memory().unwrap();
        for name in ["c", "a", "b", "d"] {
            store
                .create_function(&version(name, "r"), &BTreeMap::new(), None)
                .unwrap();
        }
        let first = store.list_versions(None, 3, false).unwrap();
        let names: Vec<_> = first.iter().map(|v| v.function_name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        let after = ListPosition {
            function_name: "c".into(),
            version_order: 0,
        };
        let rest = store.list_versions(Some(&after), 3, false).unwrap();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].function_name, "d");
    }

    #[test]
    fn tags_and_delete() {
        let store = SqliteStore::open_in_memory().unwrap();
        let tags = BTreeMap::from([("team".to_owned(), "a".to_owned())]);
        store
            .create_function(&version("f", "r"), &tags, None)
            .unwrap();
        assert_eq!(store.tags("f").unwrap(), Some(tags));
        let set = BTreeMap::from([("env".to_owned(), "prod".to_owned())]);
        assert!(store.update_tags("f", &set, &["team".to_owned()]).unwrap());
        assert_eq!(store.tags("f").unwrap(), Some(set));
        assert_eq!(
            store.account_usage().unwrap(),
            AccountUsage {
                function_count: 1,
                total_code_size: 10
            }
        );
        assert_eq!(store.referenced_code().unwrap().len(), 1);
        assert!(store.delete_function("f").unwrap());
        assert!(!store.delete_function("f").unwrap());
        assert_eq!(store.tags("f").unwrap(), None);
        assert_eq!(store.get_version("f", LATEST).unwrap(), None);
        assert!(!store.update_tags("f", &BTreeMap::new(), &[]).unwrap());
    }

    fn spec(n: u32) -> PublishSpec {
        PublishSpec {
            description: None,
            version_revision_id: format!("v{n}"),
            latest_revision_id: format!("l{n}"),
            last_modified: "2024-05-01T12:34:56.789+0000".into(),
        }
    }

    #[test]
    fn publishing_numbers_versions_and_skips_unchanged_latest() {
        let store = SqliteStore::open_in_memory().unwrap();
        let created = store
            .create_function(&version("f", "r1"), &BTreeMap::new(), Some(&spec(1)))
            .unwrap()
            .unwrap();
        assert!(created.created);
        assert_eq!(created.version.version, "1");
        assert_eq!(created.version.revision_id, "v1");
        // Publishing moved $LATEST's revision.
        let latest = store.get_version("f", LATEST).unwrap().unwrap();
        assert_eq!(latest.revision_id, "l1");

        // Unchanged: the same version comes back, nothing moves.
        let again = store.publish_version("f", "l1", &spec(2)).unwrap();
        assert!(!again.created);
        assert_eq!(again.version.version, "1");
        assert_eq!(
            store.get_version("f", LATEST).unwrap().unwrap().revision_id,
            "l1"
        );

        // A stale revision is refused.
        assert!(matches!(
            store.publish_version("f", "r1", &spec(3)),
            Err(StoreError::RevisionMismatch { .. })
        ));

        let mut changed = version("f", "r2");
        changed.settings.memory_mb = 512;
        let published = store
            .replace_latest(&changed, "l1", Some(&spec(4)))
            .unwrap()
            .unwrap();
        assert_eq!(published.version.version, "2");
        assert_eq!(published.version.settings.memory_mb, 512);

        // Numbers are never reused, even after the newest version is deleted.
        assert_eq!(
            store.delete_version("f", "2").unwrap(),
            VersionDeletion::Deleted
        );
        assert_eq!(
            store.delete_version("f", "2").unwrap(),
            VersionDeletion::NoSuchVersion
        );
        assert_eq!(
            store.delete_version("g", "2").unwrap(),
            VersionDeletion::NoSuchFunction
        );
        let mut changed = store.get_version("f", LATEST).unwrap().unwrap();
        changed.settings.memory_mb = 1024;
        changed.revision_id = "r3".into();
        store.replace_latest(&changed, "l4", None).unwrap();
        let third = store.publish_version("f", "r3", &spec(5)).unwrap();
        assert_eq!(third.version.version, "3");

        let listed: Vec<String> = store
            .list_function_versions("f", -1, 10)
            .unwrap()
            .unwrap()
            .into_iter()
            .map(|v| v.version)
            .collect();
        assert_eq!(listed, ["$LATEST", "1", "3"]);
        let page: Vec<String> = store
            .list_function_versions("f", 0, 1)
            .unwrap()
            .unwrap()
            .into_iter()
            .map(|v| v.version)
            .collect();
        assert_eq!(page, ["1"]);
        assert_eq!(store.list_function_versions("g", -1, 10).unwrap(), None);
        assert_eq!(
            store
                .get_version("f", "1")
                .unwrap()
                .unwrap()
                .settings
                .memory_mb,
            128,
            "published versions never change"
        );
    }

    fn alias(name: &str, version: &str, additional: Option<&str>, revision: &str) -> Alias {
        Alias {
            function_name: "f".into(),
            name: name.into(),
            function_version: version.into(),
            description: String::new(),
            additional: additional.map(|v| lamina_model::alias::AdditionalVersion {
                version: v.into(),
                weight: 0.1,
            }),
            revision_id: revision.into(),
        }
    }

    #[test]
    fn aliases_point_only_at_existing_versions_and_pin_them() {
        let store = SqliteStore::open_in_memory().unwrap();
        assert!(matches!(
            store.create_alias(&alias("live", "1", None, "a1")),
            Err(StoreError::NotFound { .. })
        ));
        store
            .create_function(&version("f", "r1"), &BTreeMap::new(), Some(&spec(1)))
            .unwrap();
        let mut next = version("f", "r2");
        next.settings.memory_mb = 256;
        store.replace_latest(&next, "l1", Some(&spec(2))).unwrap();

        assert!(matches!(
            store.create_alias(&alias("live", "3", None, "a1")),
            Err(StoreError::VersionNotFound { version, .. }) if version == "3"
        ));
        store
            .create_alias(&alias("live", "1", Some("2"), "a1"))
            .unwrap();
        store.create_alias(&alias("beta", "2", None, "b1")).unwrap();
        store
            .create_alias(&alias("all", "$LATEST", None, "c1"))
            .unwrap();
        assert!(matches!(
            store.create_alias(&alias("live", "2", None, "a2")),
            Err(StoreError::AliasAlreadyExists { .. })
        ));
        assert_eq!(
            store.get_alias("f", "live").unwrap(),
            Some(alias("live", "1", Some("2"), "a1"))
        );

        // Neither a primary nor an additional version can go while routed to.
        assert!(matches!(
            store.delete_version("f", "2"),
            Err(StoreError::VersionInUse { aliases, .. }) if aliases == ["beta", "live"]
        ));
        assert!(matches!(
            store.update_alias(&alias("live", "2", None, "a2"), "stale"),
            Err(StoreError::AliasRevisionMismatch { .. })
        ));
        store
            .update_alias(&alias("live", "2", None, "a2"), "a1")
            .unwrap();
        assert_eq!(
            store.delete_version("f", "1").unwrap(),
            VersionDeletion::Deleted
        );

        let names = |version: Option<&str>, after: Option<&str>| -> Vec<String> {
            store
                .list_aliases("f", version, after, 10)
                .unwrap()
                .unwrap()
                .into_iter()
                .map(|a| a.name)
                .collect()
        };
        assert_eq!(names(None, None), ["all", "beta", "live"]);
        assert_eq!(names(Some("2"), None), ["beta", "live"]);
        assert_eq!(names(None, Some("beta")), ["live"]);
        assert!(store.delete_alias("f", "beta").unwrap());
        assert!(!store.delete_alias("f", "beta").unwrap());

        assert!(store.delete_function("f").unwrap());
        assert_eq!(store.get_alias("f", "live").unwrap(), None);
        assert_eq!(store.list_aliases("f", None, None, 10).unwrap(), None);
    }

    fn layer(name: &str, sha: char) -> LayerVersion {
        LayerVersion {
            layer_name: name.into(),
            version: 0,
            description: String::new(),
            created_date: "2024-05-01T12:34:56.789+0000".into(),
            compatible_runtimes: None,
            compatible_architectures: None,
            license_info: None,
            code: CodeRef {
                sha256_hex: sha.to_string().repeat(64),
                size: 1,
                unzipped_size: 1,
            },
        }
    }

    #[test]
    fn layer_versions_are_numbered_and_kept_while_functions_use_them() {
        let store = SqliteStore::open_in_memory().unwrap();
        assert_eq!(
            store
                .publish_layer_version(&layer("l", 'a'))
                .unwrap()
                .version,
            1
        );
        assert_eq!(
            store
                .publish_layer_version(&layer("l", 'b'))
                .unwrap()
                .version,
            2
        );
        assert_eq!(
            store
                .publish_layer_version(&layer("m", 'c'))
                .unwrap()
                .version,
            1
        );
        let versions: Vec<u64> = store
            .list_layer_versions("l")
            .unwrap()
            .iter()
            .map(|v| v.version)
            .collect();
        assert_eq!(versions, [2, 1]);
        assert_eq!(store.list_all_layer_versions().unwrap().len(), 3);
        // Layer archives count towards the account's code storage, as on AWS.
        assert_eq!(store.account_usage().unwrap().total_code_size, 3);

        let mut f = version("f", "r1");
        f.settings.layers = vec![lamina_model::function::LayerRef {
            arn: "arn:aws:lambda:us-east-1:000000000000:layer:l:1".into(),
            code_size: 1,
            sha256_hex: "a".repeat(64),
            unzipped_size: 1,
        }];
        store.create_function(&f, &BTreeMap::new(), None).unwrap();
        assert!(store.delete_layer_version("l", 1).unwrap());
        assert!(!store.delete_layer_version("l", 1).unwrap());
        assert!(store.delete_layer_version("l", 2).unwrap());
        assert_eq!(store.get_layer_version("l", 1).unwrap(), None);

        // The deleted version's code stays: a function still uses it. Version 2's goes.
        let referenced = store.referenced_code().unwrap();
        assert!(referenced.contains(&"a".repeat(64)));
        assert!(!referenced.contains(&"b".repeat(64)));
        assert!(referenced.contains(&"c".repeat(64)));
        assert_eq!(
            store.referenced_layer_lists().unwrap(),
            HashSet::from([vec!["a".repeat(64)]])
        );
        // Numbers continue after every version was deleted.
        assert_eq!(
            store
                .publish_layer_version(&layer("l", 'd'))
                .unwrap()
                .version,
            3
        );
    }

    fn policy(revision: &str) -> StoredPolicy {
        StoredPolicy {
            revision_id: revision.into(),
            document: format!("{{\"rev\":\"{revision}\"}}"),
        }
    }

    #[test]
    fn policies_are_compare_and_swap_and_go_with_their_resource() {
        let store = SqliteStore::open_in_memory().unwrap();
        assert!(matches!(
            store.put_function_policy("f", "", None, Some(&policy("p1"))),
            Err(StoreError::NotFound { .. })
        ));
        store
            .create_function(&version("f", "r1"), &BTreeMap::new(), Some(&spec(1)))
            .unwrap();
        store.create_alias(&alias("live", "1", None, "a1")).unwrap();
        for qualifier in ["", "1", "live"] {
            store
                .put_function_policy("f", qualifier, None, Some(&policy("p1")))
                .unwrap();
            assert!(matches!(
                store.put_function_policy("f", qualifier, None, Some(&policy("p2"))),
                Err(StoreError::PolicyRevisionMismatch { .. })
            ));
        }
        assert!(matches!(
            store.put_function_policy("f", "7", None, Some(&policy("p1"))),
            Err(StoreError::VersionNotFound { .. })
        ));
        assert!(matches!(
            store.put_function_policy("f", "beta", None, Some(&policy("p1"))),
            Err(StoreError::AliasNotFound { .. })
        ));
        store
            .put_function_policy("f", "", Some("p1"), Some(&policy("p2")))
            .unwrap();
        assert_eq!(
            store.get_function_policy("f", "").unwrap(),
            Some(policy("p2"))
        );

        // An alias or version takes its policy along.
        assert!(store.delete_alias("f", "live").unwrap());
        assert_eq!(store.get_function_policy("f", "live").unwrap(), None);
        assert_eq!(
            store.delete_version("f", "1").unwrap(),
            VersionDeletion::Deleted
        );
        assert_eq!(store.get_function_policy("f", "1").unwrap(), None);
        store
            .put_function_policy("f", "", Some("p2"), None)
            .unwrap();
        assert_eq!(store.get_function_policy("f", "").unwrap(), None);
        store
            .put_function_policy("f", "", None, Some(&policy("p3")))
            .unwrap();
        assert!(store.delete_function("f").unwrap());
        store
            .create_function(&version("f", "r1"), &BTreeMap::new(), None)
            .unwrap();
        assert_eq!(store.get_function_policy("f", "").unwrap(), None);

        // Layer versions.
        assert!(matches!(
            store.get_layer_version_policy("l", 1),
            Err(StoreError::LayerVersionNotFound { .. })
        ));
        store.publish_layer_version(&layer("l", 'a')).unwrap();
        assert_eq!(store.get_layer_version_policy("l", 1).unwrap(), None);
        store
            .put_layer_version_policy("l", 1, None, Some(&policy("q1")))
            .unwrap();
        assert!(matches!(
            store.put_layer_version_policy("l", 1, Some("stale"), None),
            Err(StoreError::PolicyRevisionMismatch { .. })
        ));
        assert_eq!(
            store.get_layer_version_policy("l", 1).unwrap(),
            Some(policy("q1"))
        );
        store
            .put_layer_version_policy("l", 1, Some("q1"), None)
            .unwrap();
        assert_eq!(store.get_layer_version_policy("l", 1).unwrap(), None);
        assert!(matches!(
            store.put_layer_version_policy("l", 2, None, Some(&policy("q1"))),
            Err(StoreError::LayerVersionNotFound { .. })
        ));
    }

    #[test]
    fn data_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lamina.db");
        {
            let store = SqliteStore::open(&path).unwrap();
            store
                .create_function(&version("f", "r1"), &BTreeMap::new(), None)
                .unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        assert!(store.get_version("f", LATEST).unwrap().is_some());
    }
}
