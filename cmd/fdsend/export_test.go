package main

// Run, EncodeMessage and the rest expose the command's internals to the
// external test package.
var (
	Run           = run
	ExitCode      = exitCode
	EncodeMessage = encodeMessage
	DecodeReply   = decodeReply
	ErrProtocol   = errProtocol
)
