"""Token quotas per owner (`CHATSTREAM_QUOTA_*`): `quotas.Quotas`, over the stores of
`stores` (memory) and `redis_store`, in the windows of `window` (which `config` reads,
so this package imports nothing at its top)."""
