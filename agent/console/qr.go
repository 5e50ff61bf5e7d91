package console

import (
	"strings"

	qrcode "github.com/skip2/go-qrcode"
)

// QR renders a ticket as a QR code in half blocks (two modules a cell), light
// modules drawn, for the usual light-on-dark terminal. The lowest error
// correction keeps a ticket's code small enough for a terminal: a screen
// is not a crumpled label. Empty when it does not fit in a QR code.
//
// A ticket is coded in capitals: base32 then fits QR's alphanumeric mode,
// 5.5 bits a character instead of 8, four rows fewer on screen, and
// tickets are read in either case.
func QR(ticket string) string {
	q, err := qrcode.New(strings.ToUpper(ticket), qrcode.Low)
	if err != nil {
		return ""
	}
	return q.ToSmallString(false)
}
