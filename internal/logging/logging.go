// Package logging builds the one logrus logger a binary passes down.
package logging

import (
	"fmt"
	"io"

	"github.com/sirupsen/logrus"
)

// Levels and Formats are the values New takes, for help and completion.
var (
	Levels  = []string{"trace", "debug", "info", "warn", "error"}
	Formats = []string{"text", "json"}
)

// New returns a logger writing to w at level ("trace".."error") in format
// ("text" or "json").
func New(w io.Writer, level, format string) (*logrus.Logger, error) {
	l := logrus.New()
	l.SetOutput(w)
	lv, err := logrus.ParseLevel(level)
	if err != nil {
		return nil, fmt.Errorf("--log-level %q: want trace, debug, info, warn or error", level)
	}
	l.SetLevel(lv)
	switch format {
	case "", "text":
		l.SetFormatter(&logrus.TextFormatter{FullTimestamp: true, TimestampFormat: "15:04:05.000"})
	case "json":
		l.SetFormatter(&logrus.JSONFormatter{})
	default:
		return nil, fmt.Errorf("--log-format %q: want text or json", format)
	}
	return l, nil
}
