//go:build !unix

package limit

import "errors"

// RaiseNoFile is not supported here: callers keep their default budget.
func RaiseNoFile() (uint64, error) { return 0, errors.ErrUnsupported }
