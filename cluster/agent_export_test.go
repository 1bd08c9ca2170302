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

// AgentMsg is an agent-protocol message as decodeAgentMsg fills it.
type AgentMsg = agentMsg

// DecodeAgentMsg decodes one agent-protocol message as either end does.
func DecodeAgentMsg(p *fastjson.Parser, b []byte) (AgentMsg, error) {
	var msg agentMsg
	err := decodeAgentMsg(p, b, &msg)
	return msg, err
}

// AgentStatusFrame is the "status" frame an agent sends for st, and what
// it left out of st to fit the frame.
func AgentStatusFrame(st *ControlStatus) ([]byte, []string) {
	return agentStatusFrame(&agentMsg{Type: "status", Status: st, Ready: true})
}

// MaxAgentFrame is the agent protocol's frame limit.
const MaxAgentFrame = maxAgentFrame
