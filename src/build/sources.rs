//! A build's sources: located, pinned and fetched, pre-flight checked, and
//! hashed into artifacts, in the order that keeps mistakes cheap.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use crate::build::error::{BuildError, InputError};
use crate::build::hub_sources::HubFetch;
use crate::build::plan::Plan;
use crate::cache::remote::RemoteCache;
use crate::cache::Cache;
use crate::hub::HubConfig;
use crate::recipe::{Recipe, StepDef};
use crate::steps::Artifact;

/// The paths of a step's source inputs (step inputs are not built yet).
fn source_inputs(step: &StepDef, sources: &BTreeMap<String, PathBuf>) -> BTreeMap<String, PathBuf> {
    step.step
        .inputs()
        .into_iter()
        .filter_map(|i| sources.get(&i.name).map(|p| (i.name, p.clone())))
        .collect()
}

/// Makes the sources among `plan` available and runs every planned step's
/// pre-flight check, in the order that keeps mistakes cheap: local sources are
/// located, Hub sources pinned (`yibuild.lock`) and their small files and
/// safetensors headers fetched, the pre-flight checks run, and only then are
/// Hub weights downloaded. Local sources are hashed (memoized); a Hub source's
/// digest comes from its lock entry. Errors about the inputs are [`InputError`]s.
pub fn prepare_sources(
    recipe: &Recipe,
    plan: &[String],
    cache: &Cache,
    hub: &HubConfig,
    log: &dyn Fn(&str, &str),
) -> Result<BTreeMap<String, Artifact>, BuildError> {
    let mut paths = BTreeMap::new();
    for name in plan {
        if let Some(src) = recipe.source(name).filter(|s| s.hub_repo().is_none()) {
            let path = src.locate().map_err(|e| InputError::Source {
                name: name.clone(),
                cause: e.into(),
            })?;
            paths.insert(name.clone(), path);
        }
    }
    let fetch = HubFetch::resolve(recipe, plan, hub, log).map_err(InputError::Hub)?;
    // Created only if a Hub source needs a view: a no-op build writes nothing.
    let tmp = cache.temp_path("preflight");
    let views = fetch.preflight_views(&tmp).map_err(InputError::Hub);
    let checked = views.and_then(|views| {
        let mut all = paths.clone();
        all.extend(views);
        for name in plan {
            if let Some(step) = recipe.step(name) {
                step.step
                    .preflight(&source_inputs(step, &all))
                    .map_err(|cause| InputError::Preflight {
                        step: name.clone(),
                        cause,
                    })?;
            }
        }
        Ok(())
    });
    std::fs::remove_dir_all(&tmp).ok();
    checked?;
    fetch.fetch_weights(log).map_err(BuildError::Download)?;
    let mut artifacts = BTreeMap::new();
    for (name, path) in paths {
        let manifest = cache
            .memo()
            .manifest(&path)
            .map_err(|cause| BuildError::Source {
                name: name.clone(),
                cause,
            })?;
        artifacts.insert(name, Artifact::from_manifest(path, &manifest));
    }
    for (name, pinned) in &fetch.sources {
        artifacts.insert(
            name.clone(),
            Artifact::from_lock(pinned.snapshot(), &pinned.entry),
        );
    }
    cache.memo().save()?;
    Ok(artifacts)
}

/// Pinned Hub sources whose every consumer in `plan` is already cached: they
/// are not downloaded (a CI runner with the yibuild cache but an empty Hub
/// cache fetches nothing). Their artifacts carry the lock digest and the
/// snapshot path, which no step will read. Also returns the steps found
/// cached (locally or remotely), which need no pre-flight check. Both are
/// empty for recipes without Hub sources.
pub(crate) fn hub_sources_not_needed(
    plan: &Plan,
    cache: &Cache,
    remote: Option<&RemoteCache>,
    hub: &HubConfig,
) -> (BTreeMap<String, Artifact>, BTreeSet<String>) {
    let recipe = plan.recipe;
    let mut out = BTreeMap::new();
    let has_hub = plan
        .order
        .iter()
        .any(|n| recipe.source(n).is_some_and(|s| s.hub_repo().is_some()));
    if hub.update_lock || !has_hub {
        return (out, BTreeSet::new());
    }
    let fresh: BTreeSet<String> = crate::build::freshness::analyze(plan, cache, remote)
        .into_iter()
        .filter(|(_, s)| s.is_available())
        .map(|(n, _)| n)
        .collect();
    for name in &plan.order {
        if recipe.source(name).and_then(|s| s.hub_repo()).is_none() {
            continue;
        }
        let consumers_fresh = plan
            .steps()
            .filter(|s| plan.inputs(&s.name).contains(name))
            .all(|s| fresh.contains(&s.name));
        if !consumers_fresh {
            continue;
        }
        if let Ok(crate::build::hub_sources::HubSourceState::Pinned(p)) =
            crate::build::hub_sources::pin_offline(recipe, name, hub)
        {
            out.insert(name.clone(), Artifact::from_lock(p.snapshot(), &p.entry));
        }
    }
    (out, fresh)
}
