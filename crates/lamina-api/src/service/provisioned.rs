//! Provisioned concurrency: Put/Get/Delete/ListProvisionedConcurrencyConfig(s), and the
//! checks that keep it within reserved and unreserved concurrency.

use lamina_model::alias::Alias;
use lamina_model::{FunctionRef, Qualifier, RequestError, Violations};
use lamina_store::ProvisionedConfig;
use serde::Serialize;

use super::{ConcurrencyChanges, ControlPlane, now};
use crate::error::ApiError;

/// A configuration as AWS shows it, with the allocation measured now.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ProvisionedConcurrencyConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub function_arn: Option<String>,
    pub requested_provisioned_concurrent_executions: u32,
    pub available_provisioned_concurrent_executions: u32,
    pub allocated_provisioned_concurrent_executions: u32,
    /// `IN_PROGRESS` until every requested environment has initialised, then `READY`.
    pub status: &'static str,
    pub last_modified: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListProvisionedConcurrencyConfigsResponse {
    pub provisioned_concurrency_configs: Vec<ProvisionedConcurrencyConfig>,
}

impl ControlPlane {
    /// The qualifier a provisioned-concurrency operation names, and the published version
    /// it resolves to now. `$LATEST` cannot be provisioned.
    fn provisioned_target(&self, function: &FunctionRef) -> Result<(String, String), ApiError> {
        let qualifier = match function.qualifier_kind() {
            Qualifier::Latest if function.qualifier.is_none() => {
                let mut violations = Violations::new();
                violations.push("qualifier", Some("null"), "Member must not be null");
                let missing = violations
                    .into_result()
                    .expect_err("a missing qualifier was recorded");
                return Err(RequestError::from(missing).into());
            }
            Qualifier::Latest => {
                return Err(RequestError::InvalidParameter(
                    "Provisioned Concurrency Configs cannot be applied to unpublished function \
                     versions."
                        .to_owned(),
                )
                .into());
            }
            Qualifier::Version(q) | Qualifier::Alias(q) => q.to_owned(),
        };
        let version = self.find_version(function)?;
        Ok((qualifier, version.version))
    }

    fn describe_provisioned(
        &self,
        config: &ProvisionedConfig,
        with_arn: bool,
    ) -> Result<ProvisionedConcurrencyConfig, ApiError> {
        // Each version's share, counted up to that share: a weighted alias is allocated
        // when both of its versions are.
        let allocated = match (&self.change_listener, self.provisioned_shares(config)) {
            (Some(listener), Ok(shares)) => shares
                .iter()
                .map(|(version, share)| {
                    listener
                        .provisioned_allocated(&config.function_name, version)
                        .min(*share)
                })
                .sum::<u32>(),
            _ => 0,
        }
        .min(config.requested);
        Ok(ProvisionedConcurrencyConfig {
            function_arn: with_arn.then(|| {
                self.account
                    .qualified_function_arn(&config.function_name, Some(&config.qualifier))
            }),
            requested_provisioned_concurrent_executions: config.requested,
            available_provisioned_concurrent_executions: allocated,
            allocated_provisioned_concurrent_executions: allocated,
            status: if allocated >= config.requested {
                "READY"
            } else {
                "IN_PROGRESS"
            },
            last_modified: config.last_modified.clone(),
        })
    }

    /// The published versions a qualifier resolves to now, with the share of
    /// invocations each receives: a version itself, an alias's version, or both versions
    /// of a weighted alias.
    fn routed_versions(
        &self,
        function_name: &str,
        qualifier: &str,
    ) -> Result<Vec<(String, f64)>, ApiError> {
        let function = FunctionRef::named(function_name, Some(qualifier));
        Ok(match function.qualifier_kind() {
            Qualifier::Alias(alias) => {
                let alias = self
                    .store
                    .get_alias(function_name, alias)?
                    .ok_or_else(|| self.not_found(&function))?;
                match alias.additional {
                    Some(additional) => vec![
                        (alias.function_version, 1.0 - additional.weight),
                        (additional.version, additional.weight),
                    ],
                    None => vec![(alias.function_version, 1.0)],
                }
            }
            Qualifier::Version(_) | Qualifier::Latest => {
                vec![(self.find_version(&function)?.version, 1.0)]
            }
        })
    }

    /// How a configuration's environments are spread over the versions it resolves to.
    /// A weighted alias's are split by its routing weights, as AWS allocates them during
    /// canary and linear deployments: the additional version gets `requested × weight`
    /// rounded to the nearest whole environment (a half goes to the main version), the
    /// main version the rest. Versions that get none are left out.
    pub(super) fn provisioned_shares(
        &self,
        config: &ProvisionedConfig,
    ) -> Result<Vec<(String, u32)>, ApiError> {
        let versions = self.routed_versions(&config.function_name, &config.qualifier)?;
        let shares = match versions.as_slice() {
            [(main, _), (additional, weight)] => {
                let additional_share = split_by_weight(config.requested, *weight);
                vec![
                    (main.clone(), config.requested - additional_share),
                    (additional.clone(), additional_share),
                ]
            }
            _ => versions
                .into_iter()
                .map(|(version, _)| (version, config.requested))
                .collect(),
        };
        Ok(shares.into_iter().filter(|(_, share)| *share > 0).collect())
    }

    /// Another configuration of the function than `qualifier`'s own that covers one of
    /// `versions` now, with the version they share. Configurations on versions are
    /// looked at first, so a clash with one gets AWS's own message.
    fn provisioned_covering(
        &self,
        function_name: &str,
        qualifier: &str,
        versions: &[String],
    ) -> Result<Option<(ProvisionedConfig, String)>, ApiError> {
        let mut configs = self.store.provisioned(Some(function_name))?;
        configs.retain(|c| c.qualifier != qualifier);
        configs.sort_by_key(|c| is_alias(&c.qualifier));
        for config in configs {
            // A configuration whose alias is gone covers nothing.
            let Ok(covered) = self.routed_versions(function_name, &config.qualifier) else {
                continue;
            };
            if let Some((shared, _)) = covered.into_iter().find(|(v, _)| versions.contains(v)) {
                return Ok(Some((config, shared)));
            }
        }
        Ok(None)
    }

    /// AWS refuses a configuration on an alias whose version has its own, on a version
    /// that an alias with a configuration points at (with either of a weighted alias's
    /// versions), and on an alias whose version another provisioned alias points at.
    fn check_no_overlap(&self, function: &FunctionRef, qualifier: &str) -> Result<(), ApiError> {
        let versions: Vec<String> = self
            .routed_versions(&function.name, qualifier)?
            .into_iter()
            .map(|(version, _)| version)
            .collect();
        let Some((other, version)) =
            self.provisioned_covering(&function.name, qualifier, &versions)?
        else {
            return Ok(());
        };
        match (is_alias(qualifier), is_alias(&other.qualifier)) {
            (true, false) => Err(ApiError::ProvisionedConflict {
                message: "Alias can't be used for Provisioned Concurrency configuration on an \
                          already Provisioned version",
            }),
            (false, true) => Err(ApiError::ProvisionedConflict {
                message: "Version is pointed by a Provisioned Concurrency alias",
            }),
            (true, true) => Err(ApiError::ProvisionedAliasOverlap {
                function: function.name.clone(),
                alias: qualifier.to_owned(),
                version,
                provisioned_by: other.qualifier,
            }),
            // Two versions cover only themselves: they never share one.
            (false, false) => Ok(()),
        }
    }

    /// UpdateAlias must not route an alias with a configuration onto a version another
    /// configuration already covers (the version's own, or another alias's), for the same
    /// reason Put refuses overlaps. Only versions the alias does not route to yet are
    /// checked, so an alias stored before this check existed can still be changed.
    ///
    /// The caller holds `concurrency_changes` from this check until the alias is written.
    pub(super) fn check_alias_move(
        &self,
        current: &Alias,
        updated: &Alias,
    ) -> Result<(), ApiError> {
        let function_name = &updated.function_name;
        let provisioned = self
            .store
            .provisioned(Some(function_name))?
            .iter()
            .any(|c| c.qualifier == updated.name);
        if !provisioned {
            return Ok(());
        }
        let added: Vec<String> = updated
            .versions()
            .filter(|v| !current.versions().any(|old| old == *v))
            .map(str::to_owned)
            .collect();
        match self.provisioned_covering(function_name, &updated.name, &added)? {
            None => Ok(()),
            Some((other, version)) => Err(ApiError::ProvisionedAliasMove {
                function: function_name.clone(),
                alias: updated.name.clone(),
                version,
                provisioned_by: other.qualifier,
            }),
        }
    }

    /// The provisioned concurrency of functions without a reservation (but `except`):
    /// it is taken out of the account limit like a reservation.
    pub(super) fn unreserved_provisioned(&self, except: Option<&str>) -> Result<u64, ApiError> {
        let reservations = self.store.reservations()?;
        Ok(self
            .store
            .provisioned(None)?
            .iter()
            .filter(|c| Some(c.function_name.as_str()) != except)
            .filter(|c| {
                !reservations
                    .iter()
                    .any(|(name, _)| *name == c.function_name)
            })
            .map(|c| u64::from(c.requested))
            .sum())
    }

    /// What is left of the account limit for functions without a reservation: the limit
    /// minus every reservation and the provisioned concurrency of unreserved functions
    /// (leaving out one configuration, the one being replaced). AWS counts provisioned
    /// concurrency this way: putting it on a function without a reservation fails with
    /// "decreases account's UnreservedConcurrentExecution below its minimum value".
    pub(super) fn unreserved_concurrency(
        &self,
        except: Option<(&str, &str)>,
    ) -> Result<u64, ApiError> {
        let reservations = self.store.reservations()?;
        let reserved: u64 = reservations.iter().map(|(_, r)| u64::from(*r)).sum();
        let provisioned: u64 = self
            .store
            .provisioned(None)?
            .iter()
            .filter(|c| {
                !reservations
                    .iter()
                    .any(|(name, _)| *name == c.function_name)
            })
            .filter(|c| except != Some((c.function_name.as_str(), c.qualifier.as_str())))
            .map(|c| u64::from(c.requested))
            .sum();
        Ok(u64::from(self.concurrent_executions)
            .saturating_sub(reserved)
            .saturating_sub(provisioned))
    }

    pub fn put_provisioned_concurrency(
        &self,
        function: &FunctionRef,
        requested: Option<i64>,
    ) -> Result<ProvisionedConcurrencyConfig, ApiError> {
        let mut violations = Violations::new();
        let requested = match requested {
            None => {
                violations.push(
                    "provisionedConcurrentExecutions",
                    Some("null"),
                    "Member must not be null",
                );
                0
            }
            Some(value) => {
                violations.range("provisionedConcurrentExecutions", value, 1, i64::MAX);
                value
            }
        };
        violations.into_result().map_err(RequestError::from)?;
        let requested = u32::try_from(requested).unwrap_or(u32::MAX);

        // The checks read reservations, every configuration and how aliases route, and
        // must still hold when the configuration is written: two Puts checked against the
        // same headroom would both pass. They are not one SQLite transaction (as a
        // reservation's is) because what they depend on spans three tables and the
        // routing rules above (weights, both versions of an alias), which the store does
        // not know. Instead every change that could make them fail (PutFunctionConcurrency,
        // this Put, UpdateAlias) runs its checks and its write under `concurrency_changes`;
        // the rest only free headroom or remove overlaps (deleting a reservation, a
        // configuration) or add an alias without a configuration; deleting an alias or a
        // version takes the lock too, so that its configuration goes with it.
        // This process is the store's only writer.
        let in_order = self.concurrency_changes();
        // Resolved under the lock, so that the alias or version cannot be deleted between
        // this check and the write (which would leave a configuration nothing can reach).
        let (qualifier, version) = self.provisioned_target(function)?;
        if let Qualifier::Alias(alias) = function.qualifier_kind()
            && self
                .store
                .get_alias(&function.name, alias)?
                .is_some_and(|alias| alias.additional.is_some())
        {
            // AWS's answer (a weighted alias gets its configuration split by weight only
            // when the weights come after the configuration, as in a canary deployment).
            return Err(RequestError::InvalidParameter(
                "Alias with weights can not be used with Provisioned Concurrency".to_owned(),
            )
            .into());
        }
        let others: u64 = self
            .store
            .provisioned(Some(&function.name))?
            .iter()
            .filter(|c| c.qualifier != qualifier)
            .map(|c| u64::from(c.requested))
            .sum();
        match self.store.reserved_concurrency(&function.name)?.flatten() {
            Some(reserved) if others + u64::from(requested) > u64::from(reserved) => {
                return Err(RequestError::InvalidParameter(
                    "Requested Provisioned Concurrency should not be greater than the \
                     reservedConcurrentExecution for function"
                        .to_owned(),
                )
                .into());
            }
            Some(_) => {}
            None => {
                let minimum = u64::from(self.minimum_unreserved());
                let unreserved = self.unreserved_concurrency(Some((&function.name, &qualifier)))?;
                if unreserved < u64::from(requested) + minimum {
                    return Err(RequestError::InvalidParameter(format!(
                        "Specified ConcurrentExecutions for function decreases account's \
                         UnreservedConcurrentExecution below its minimum value of [{minimum}]."
                    ))
                    .into());
                }
            }
        }

        self.check_no_overlap(function, &qualifier)?;
        let config = ProvisionedConfig {
            function_name: function.name.clone(),
            qualifier,
            requested,
            last_modified: now(),
        };
        if !self.store.put_provisioned(&config)? {
            return Err(self.not_found(function));
        }
        tracing::info!(function = %function.name, qualifier = %config.qualifier, %version,
            requested, "provisioned concurrency set");
        self.apply_provisioned_held(&function.name, &in_order)?;
        drop(in_order);
        self.describe_provisioned(&config, false)
    }

    pub fn get_provisioned_concurrency(
        &self,
        function: &FunctionRef,
    ) -> Result<ProvisionedConcurrencyConfig, ApiError> {
        let (qualifier, _) = self.provisioned_target(function)?;
        let config = self
            .store
            .provisioned(Some(&function.name))?
            .into_iter()
            .find(|c| c.qualifier == qualifier)
            .ok_or(ApiError::ProvisionedConcurrencyConfigNotFound)?;
        self.describe_provisioned(&config, false)
    }

    pub fn delete_provisioned_concurrency(&self, function: &FunctionRef) -> Result<(), ApiError> {
        let (qualifier, _) = self.provisioned_target(function)?;
        if self.store.delete_provisioned(&function.name, &qualifier)? {
            tracing::info!(function = %function.name, %qualifier, "provisioned concurrency removed");
            self.apply_provisioned(&function.name)?;
        }
        Ok(())
    }

    pub fn list_provisioned_concurrency(
        &self,
        function: &FunctionRef,
    ) -> Result<ListProvisionedConcurrencyConfigsResponse, ApiError> {
        if self
            .store
            .get_version(&function.name, lamina_model::LATEST)?
            .is_none()
        {
            return Err(self.not_found(function));
        }
        let configs = self
            .store
            .provisioned(Some(&function.name))?
            .iter()
            .map(|config| self.describe_provisioned(config, true))
            .collect::<Result<_, _>>()?;
        Ok(ListProvisionedConcurrencyConfigsResponse {
            provisioned_concurrency_configs: configs,
        })
    }

    /// Hands the engine the provisioned concurrency of every version of a function: the
    /// sum of the shares of the configurations that resolve to it now (a version's own,
    /// its aliases', a weighted alias's split by weight).
    ///
    /// Reading the store and telling the engine happen under one lock, so calls reach the
    /// engine in the order they read the store: the last one carries the latest state,
    /// however quickly configurations change.
    pub(super) fn apply_provisioned(&self, function_name: &str) -> Result<(), ApiError> {
        let in_order = self.concurrency_changes();
        self.apply_provisioned_held(function_name, &in_order)
    }

    /// [`Self::apply_provisioned`] for a caller that already holds `concurrency_changes`
    /// (the guard is the proof), having just written a change under it.
    pub(super) fn apply_provisioned_held(
        &self,
        function_name: &str,
        _in_order: &ConcurrencyChanges<'_>,
    ) -> Result<(), ApiError> {
        let Some(listener) = &self.change_listener else {
            return Ok(());
        };
        let mut targets = std::collections::BTreeMap::<String, u32>::new();
        for config in self.store.provisioned(Some(function_name))? {
            // A configuration whose alias or version is gone provisions nothing.
            for (version, share) in self.provisioned_shares(&config).unwrap_or_default() {
                let target = targets.entry(version).or_default();
                *target = target.saturating_add(share);
            }
        }
        listener.provisioned_targets(function_name, &targets);
        Ok(())
    }

    /// Re-applies every stored configuration to the engine (at start-up).
    pub fn restore_provisioned_concurrency(&self) -> Result<(), ApiError> {
        let mut functions: Vec<String> = self
            .store
            .provisioned(None)?
            .into_iter()
            .map(|config| config.function_name)
            .collect();
        functions.dedup();
        for function_name in functions {
            self.apply_provisioned(&function_name)?;
        }
        Ok(())
    }
}

/// Whether a qualifier names an alias (not a version).
fn is_alias(qualifier: &str) -> bool {
    matches!(Qualifier::of(Some(qualifier)), Qualifier::Alias(_))
}

/// The additional version's share of `requested` environments at `weight`: the nearest
/// whole number, a tie going to the main version.
fn split_by_weight(requested: u32, weight: f64) -> u32 {
    let exact = f64::from(requested) * weight.clamp(0.0, 1.0);
    let share = if exact.fract() == 0.5 {
        exact.floor()
    } else {
        exact.round()
    };
    (share as u32).min(requested)
}

#[cfg(test)]
mod tests {
    use super::split_by_weight;

    #[test]
    fn weights_split_whole_environments() {
        assert_eq!(split_by_weight(10, 0.1), 1);
        assert_eq!(split_by_weight(10, 0.25), 2); // 2.5: the half stays on the main version
        assert_eq!(split_by_weight(2, 0.5), 1);
        assert_eq!(split_by_weight(1, 0.5), 0);
        assert_eq!(split_by_weight(1, 0.6), 1);
        assert_eq!(split_by_weight(3, 0.0), 0);
        assert_eq!(split_by_weight(3, 1.0), 3);
    }
}
