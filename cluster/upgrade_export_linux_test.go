package cluster

// UpgradeEnv exposes the new image's environment filter.
func UpgradeEnv(env []string, blob string) []string { return upgradeEnv(env, blob) }
