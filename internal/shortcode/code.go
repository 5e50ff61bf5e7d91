// Package shortcode makes and reads short one-time codes such as
// 7-tidal-orbit, and runs the password-authenticated key exchange that
// turns a code into proof of two agents' identities to each other through a
// broker that learns nothing usable.
//
// A code is a slot number, which the broker hands out and which routes the
// exchange to the sharer, and two words the sharer picks and the broker
// never sees. The words are a weak password: 16 bits, enough because the
// exchange (SPAKE2) allows one guess per run, and the sharer burns the code
// at the first wrong one.
package shortcode

import (
	"crypto/rand"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// MaxSlot is the largest slot number a broker hands out.
const MaxSlot = 99999

// ErrSyntax is returned for a string that is not a code.
var ErrSyntax = errors.New("not a short code (want NUMBER-WORD-WORD, e.g. 7-tidal-orbit)")

// Code is a short code: the broker's slot and the sharer's two words.
type Code struct {
	Slot  uint32
	Words [2]uint8
}

// New returns a code for slot with two random words.
func New(slot uint32) (Code, error) {
	if slot == 0 || slot > MaxSlot {
		return Code{}, fmt.Errorf("slot %d: want 1..%d", slot, MaxSlot)
	}
	c := Code{Slot: slot}
	if _, err := rand.Read(c.Words[:]); err != nil {
		return Code{}, fmt.Errorf("code words: %w", err)
	}
	return c, nil
}

// String is the code as people read it: 7-tidal-orbit.
func (c Code) String() string {
	return strconv.FormatUint(uint64(c.Slot), 10) + "-" + words[c.Words[0]] + "-" + words[c.Words[1]]
}

// Parse reads a code as a person may type it: any case, with dashes or
// spaces between the parts, spaces around.
func Parse(s string) (Code, error) {
	parts := strings.FieldsFunc(strings.ToLower(strings.TrimSpace(s)), func(r rune) bool { return r == '-' || r == ' ' })
	if len(parts) != 3 {
		return Code{}, ErrSyntax
	}
	n, err := strconv.ParseUint(parts[0], 10, 32)
	if err != nil || n == 0 || n > MaxSlot || parts[0][0] == '+' {
		return Code{}, ErrSyntax
	}
	c := Code{Slot: uint32(n)}
	for i, w := range parts[1:] {
		b, ok := wordIndex[w]
		if !ok {
			return Code{}, fmt.Errorf("%w: %q is not one of the code words", ErrSyntax, w)
		}
		c.Words[i] = b
	}
	return c, nil
}

// Looks tells whether s is meant as a code rather than a ticket: it starts
// with a number and a dash. A typo in its words is then worth saying as
// such, not as a bad ticket.
func Looks(s string) bool {
	s = strings.TrimSpace(s)
	i := strings.IndexAny(s, "- ")
	if i <= 0 {
		return false
	}
	_, err := strconv.ParseUint(s[:i], 10, 32)
	return err == nil
}

var wordIndex = func() map[string]uint8 {
	m := make(map[string]uint8, len(words))
	for i, w := range words {
		m[w] = uint8(i)
	}
	return m
}()
