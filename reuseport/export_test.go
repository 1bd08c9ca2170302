package reuseport

// ParseSysctlInt exposes the sysctl parser to the external fuzz test.
var ParseSysctlInt = parseSysctlInt
