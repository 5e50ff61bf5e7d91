package dashboard

import (
	"fmt"
	"net/http"
	"strings"

	"github.com/skip2/go-qrcode"
)

// qr draws the share's ticket as an SVG QR code, on the server: the page
// carries no QR library, and an SVG stays sharp at any size.
func (s *Server) qr(w http.ResponseWriter, r *http.Request) {
	if s.cfg.Ticket == nil {
		http.NotFound(w, r)
		return
	}
	ticket, ok := s.cfg.Ticket(r.PathValue("share"))
	if !ok || ticket == "" {
		http.NotFound(w, r)
		return
	}
	svg, err := qrSVG(ticket)
	if err != nil {
		http.Error(w, "dashboard: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "image/svg+xml")
	w.Write([]byte(svg))
}

// qrSVG is text as a QR code: one path of unit squares on a white ground,
// with the quiet zone the scanners need.
func qrSVG(text string) (string, error) {
	q, err := qrcode.New(text, qrcode.Medium)
	if err != nil {
		return "", fmt.Errorf("qr code: %w", err)
	}
	bits := q.Bitmap() // the quiet zone included
	n := len(bits)
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 %d %d" shape-rendering="crispEdges">`, n, n)
	fmt.Fprintf(&b, `<rect width="%d" height="%d" fill="#fff"/><path fill="#000" d="`, n, n)
	for y, row := range bits {
		for x, dark := range row {
			if dark {
				fmt.Fprintf(&b, "M%d %dh1v1h-1z", x, y)
			}
		}
	}
	b.WriteString(`"/></svg>`)
	return b.String(), nil
}
