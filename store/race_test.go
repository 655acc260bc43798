//go:build race

package store

// raceEnabled reports whether the race detector is on: tests that apply a
// million commands skip then, to keep the run short.
const raceEnabled = true
