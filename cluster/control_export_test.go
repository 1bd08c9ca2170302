package cluster

import "github.com/valyala/fastjson"

// Bridges for the external tests of the control socket protocol
// (control_fuzz_test.go): its one decoder and encoder are unexported.

type SockMsg = sockMsg

func DecodeSockMsg(p *fastjson.Parser, b []byte, m *SockMsg) error { return decodeSockMsg(p, b, m) }

func AppendSockMsg(dst []byte, m *SockMsg) []byte { return appendSockMsg(dst, m) }
