package console

import (
	"bytes"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"

	"github.com/sirupsen/logrus"
)

// MaxLogLines bounds the log lines a console keeps.
const MaxLogLines = 100

// Logs is where a logger writes while a console shows: set it as the
// logger's output and formatter (Attach), and while the console runs its
// lines land in the console's pane, one short line each, instead of
// scribbling over the view; before and after, they go to the logger's
// previous output in its previous format. A logger that copied the output
// and formatter (the embedded broker's) follows along.
type Logs struct {
	mu    sync.Mutex
	held  bool
	lines []string // the last MaxLogLines, oldest first
	out   io.Writer
	plain logrus.Formatter
}

// Attach makes log write through a new Logs, and returns it with a func
// that gives log back its output and formatter.
func Attach(log *logrus.Logger) (*Logs, func()) {
	out, f := log.Out, log.Formatter
	l := &Logs{out: out, plain: f}
	log.SetOutput(l)
	log.SetFormatter(l)
	return l, func() {
		log.SetOutput(out)
		log.SetFormatter(f)
	}
}

// Format is the logger's formatter: a short line for the pane while held,
// the logger's own format otherwise.
func (l *Logs) Format(e *logrus.Entry) ([]byte, error) {
	l.mu.Lock()
	held, plain := l.held, l.plain
	l.mu.Unlock()
	if !held && plain != nil {
		return plain.Format(e)
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s %-4s %s", e.Time.Format("15:04:05"), levelWord(e.Level), e.Message)
	keys := make([]string, 0, len(e.Data))
	for k := range e.Data {
		// The agent's own ID is on every line, and the view's header
		// says it.
		if k != "agent" {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		v := fmt.Sprint(e.Data[k])
		if strings.ContainsAny(v, " \"=") {
			v = fmt.Sprintf("%q", v)
		}
		fmt.Fprintf(&b, " %s=%s", k, v)
	}
	b.WriteByte('\n')
	return b.Bytes(), nil
}

func levelWord(lv logrus.Level) string {
	switch lv {
	case logrus.PanicLevel, logrus.FatalLevel, logrus.ErrorLevel:
		return "ERR"
	case logrus.WarnLevel:
		return "WARN"
	case logrus.InfoLevel:
		return "INFO"
	case logrus.DebugLevel:
		return "DBG"
	default:
		return "TRC"
	}
}

// Write takes formatted log output: into the pane while held, to the
// previous output otherwise.
func (l *Logs) Write(p []byte) (int, error) {
	l.mu.Lock()
	if !l.held {
		out := l.out
		l.mu.Unlock()
		if out == nil {
			return len(p), nil
		}
		return out.Write(p)
	}
	defer l.mu.Unlock()
	for _, line := range strings.Split(strings.TrimRight(string(p), "\n"), "\n") {
		l.add(line)
	}
	return len(p), nil
}

// writeLine puts one line of the console's own where the logs go now.
func (l *Logs) writeLine(s string) {
	l.Write([]byte(s + "\n"))
}

func (l *Logs) add(line string) {
	if len(l.lines) == MaxLogLines {
		copy(l.lines, l.lines[1:])
		l.lines = l.lines[:MaxLogLines-1]
	}
	l.lines = append(l.lines, line)
}

// Last returns up to n of the newest lines, newest first.
func (l *Logs) Last(n int) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	n = min(n, len(l.lines))
	out := make([]string, 0, n)
	for i := len(l.lines) - 1; i >= len(l.lines)-n; i-- {
		out = append(out, l.lines[i])
	}
	return out
}

func (l *Logs) hold() {
	l.mu.Lock()
	l.held = true
	l.mu.Unlock()
}

func (l *Logs) release() {
	l.mu.Lock()
	l.held = false
	l.mu.Unlock()
}
