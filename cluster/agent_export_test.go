package cluster

import "github.com/valyala/fastjson"

// AgentReencode decodes an agent-protocol message and encodes it again:
// what a peer that forwards it would send.
func AgentReencode(p *fastjson.Parser, b []byte) ([]byte, error) {
	var msg agentMsg
	if err := decodeAgentMsg(p, b, &msg); err != nil {
		return nil, err
	}
	return appendAgentMsg(nil, &msg), nil
}
