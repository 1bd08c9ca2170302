package cluster

import "github.com/valyala/fastjson"

// Test hooks for the control-message decoder and encoders.

// CtlMsg is a decoded control message.
type CtlMsg = ctlMsg

// DecodeControl runs the control-message decoder with a fresh parser.
func DecodeControl(b []byte) (CtlMsg, error) {
	var p fastjson.Parser
	return decodeControl(&p, b)
}

// TypeName returns a decoded message's type as it is on the wire.
func TypeName(m *CtlMsg) string { return m.Type.String() }

var (
	AppendHeartbeat  = appendHeartbeat
	AppendData       = appendData
	AppendListen     = appendListen
	AppendListened   = appendListened
	AppendJSONString = appendJSONString
	ClipText         = clipText
	MaxControlFrame  = maxControlFrame
)

// Reencode encodes m again, for the types whose encoder the package has.
func Reencode(m *CtlMsg) ([]byte, bool) {
	switch m.Type {
	case msgHeartbeat:
		return appendHeartbeat(nil), true
	case msgData:
		return appendData(nil, m.Data), true
	case msgListen:
		return appendListen(nil, m.ID, m.Network, m.Address), true
	case msgListened:
		var err error
		if m.Err != "" {
			err = stringError(m.Err)
		}
		return appendListened(nil, m.ID, m.Name, err), true
	}
	return nil, false
}

type stringError string

func (e stringError) Error() string { return string(e) }

// NewDecoder returns the decoder with one parser reused across calls, as
// each channel goroutine uses it.
func NewDecoder() func([]byte) (CtlMsg, error) {
	var p fastjson.Parser
	return func(b []byte) (CtlMsg, error) { return decodeControl(&p, b) }
}
