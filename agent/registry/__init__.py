"""Model registry: signed manifests, publishing tools, the download client, the on-device store
and the updater that verifies, trials, swaps and rolls back models."""
