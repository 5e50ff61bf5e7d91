package main

import (
	"context"
	"errors"
)

func labBench(ctx context.Context, o options, bin binaries, r *Report) error {
	return errors.New("not built yet")
}
