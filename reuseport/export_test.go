package reuseport

// ParseSysctlInt exposes the sysctl parser to the external fuzz test.
var ParseSysctlInt = parseSysctlInt

// ProbeWith is Probe with the steering probe's program chosen by the test.
var ProbeWith = probe
