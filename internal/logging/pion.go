package logging

import (
	pion "github.com/pion/logging"
	"github.com/sirupsen/logrus"
)

// Pion feeds pion's leveled loggers (TURN client and server) into log.
// pion's messages are its internal chatter: transactions, timers, and as
// errors ordinary events such as a client going away, which our code
// reports itself where it matters. So all of them go out at debug level,
// and pion's trace messages at trace level.
func Pion(log logrus.FieldLogger) pion.LoggerFactory { return pionLoggers{log} }

type pionLoggers struct{ log logrus.FieldLogger }

func (f pionLoggers) NewLogger(scope string) pion.LeveledLogger {
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
