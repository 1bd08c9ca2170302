//go:build !linux

package cluster

func (*master) suspend() error  { return ErrNotSupported }
func (*master) resume() error   { return ErrNotSupported }
func (*master) suspended() bool { return false }
