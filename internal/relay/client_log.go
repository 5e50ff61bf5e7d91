package relay

import (
	"io"

	"github.com/sirupsen/logrus"
)

// discardLogger is the logger of a Config without one.
func discardLogger() logrus.FieldLogger {
	l := logrus.New()
	l.SetOutput(io.Discard)
	l.SetLevel(logrus.PanicLevel)
	return l
}
