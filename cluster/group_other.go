//go:build !linux

package cluster

import "time"

func (*master) suspend() error  { return ErrNotSupported }
func (*master) resume() error   { return ErrNotSupported }
func (*master) suspended() bool { return false }

func (*master) setMaxRunningTime(time.Duration) error { return ErrNotSupported }
func (*master) maxRunningTime() time.Duration         { return 0 }
