package config

import (
	"reflect"
	"strings"
)

// nearestKey returns the key of t closest to the unknown key, or "" when none
// is close enough to be a likely typo. Close enough is an edit distance
// (transpositions count once) of at most a third of the candidate's length,
// and at least 1: "sahres" finds "shares", "base" finds nothing.
func nearestKey(t reflect.Type, key string) string {
	typed := []rune(strings.ToLower(key))
	best, bestDist := "", -1
	// Struct order, not map order, so that a tie always suggests the same key.
	for i := range t.NumField() {
		f := t.Field(i)
		cand, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if cand == "" || cand == "-" || !f.IsExported() {
			continue
		}
		c := []rune(cand)
		limit := max(1, len(c)/3)
		// Lengths this far apart cannot be within the limit; the check also
		// bounds the work for a pathological key.
		if d := len(typed) - len(c); d > limit || -d > limit {
			continue
		}
		if d := editDistance(typed, c); d <= limit && (bestDist < 0 || d < bestDist) {
			best, bestDist = cand, d
		}
	}
	return best
}

// editDistance is the optimal string alignment distance: insertions,
// deletions, substitutions and transpositions of adjacent runes each cost 1.
func editDistance(a, b []rune) int {
	// Three rows: the transposition looks two back.
	prev2 := make([]int, len(b)+1)
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				cur[j] = min(cur[j], prev2[j-2]+1)
			}
		}
		prev2, prev, cur = prev, cur, prev2
	}
	return prev[len(b)]
}
