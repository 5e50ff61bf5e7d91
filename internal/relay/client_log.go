package relay

import (
	"io"

	"github.com/pion/logging"
	"github.com/sirupsen/logrus"
)

// pionLoggers feeds pion's leveled loggers into one logrus logger. pion's
// messages are its internal chatter (transactions, timers, its own view of
// failures we report ourselves), so all of them go out at debug level, and
// its trace messages at trace level where the logger has one.
type pionLoggers struct{ log logrus.FieldLogger }

var _ logging.LoggerFactory = pionLoggers{}

func (f pionLoggers) NewLogger(scope string) logging.LeveledLogger {
	return pionLogger{f.log.WithField("pion", scope)}
}

type pionLogger struct{ l logrus.FieldLogger }

func (p pionLogger) Trace(msg string) {
	if t, ok := p.l.(logrus.Ext1FieldLogger); ok {
		t.Trace(msg)
	}
}

func (p pionLogger) Tracef(format string, args ...any) {
	if t, ok := p.l.(logrus.Ext1FieldLogger); ok {
		t.Tracef(format, args...)
	}
}

func (p pionLogger) Debug(msg string)                  { p.l.Debug(msg) }
func (p pionLogger) Debugf(format string, args ...any) { p.l.Debugf(format, args...) }
func (p pionLogger) Info(msg string)                   { p.l.Debug(msg) }
func (p pionLogger) Infof(format string, args ...any)  { p.l.Debugf(format, args...) }
func (p pionLogger) Warn(msg string)                   { p.l.Debug(msg) }
func (p pionLogger) Warnf(format string, args ...any)  { p.l.Debugf(format, args...) }
func (p pionLogger) Error(msg string)                  { p.l.Debug(msg) }
func (p pionLogger) Errorf(format string, args ...any) { p.l.Debugf(format, args...) }

// discardLogger is the logger of a Config without one.
func discardLogger() logrus.FieldLogger {
	l := logrus.New()
	l.SetOutput(io.Discard)
	l.SetLevel(logrus.PanicLevel)
	return l
}
