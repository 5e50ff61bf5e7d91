package testutil

import (
	"io"
	"testing"
)

// CPUPerByte reports the process's CPU time (user and system, both ends of
// the connection) per byte moved, from now until the returned func runs:
// steadier than MB/s on a shared machine, whose other load steals time
// rather than adding work.
func CPUPerByte(b *testing.B, bytes int64) func() {
	c0 := CPUTime()
	return func() { b.ReportMetric(float64(CPUTime()-c0)/float64(bytes)*1e3, "cpu-ps/B") }
}

// PingPong bounces one byte b.N times: c writes, s echoes, c reads.
func PingPong(b *testing.B, c, s io.ReadWriter) {
	done := make(chan error, 1)
	go func() {
		done <- func() error {
			p := make([]byte, 1)
			for range b.N {
				if _, err := io.ReadFull(s, p); err != nil {
					return err
				}
				if _, err := s.Write(p); err != nil {
					return err
				}
			}
			return nil
		}()
	}()
	p := make([]byte, 1)
	b.ResetTimer()
	for range b.N {
		if _, err := c.Write(p); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, p); err != nil {
			b.Fatal(err)
		}
	}
	if err := <-done; err != nil {
		b.Fatal(err)
	}
}
