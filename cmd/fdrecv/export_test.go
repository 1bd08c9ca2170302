package main

// Run, DecodeMessage and the rest expose the command's internals to the
// external test package.
var (
	Run           = run
	ExitCode      = exitCode
	DecodeMessage = decodeMessage
	EncodeReply   = encodeReply
	ErrProtocol   = errProtocol
)

// MaxMessage is the largest valid message.
const MaxMessage = maxMessage
