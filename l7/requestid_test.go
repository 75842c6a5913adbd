package l7

import (
	"sync"
	"testing"
)

func TestNewRequestID(t *testing.T) {
	seen := map[string]bool{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 5000 {
				id := newRequestID()
				if len(id) != 36 || !uuidRE.MatchString(id) {
					t.Errorf("bad id %q", id)
					return
				}
				mu.Lock()
				if seen[id] {
					t.Errorf("duplicate id %q", id)
				}
				seen[id] = true
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
}

func TestFormatUUID(t *testing.T) {
	var u [16]byte
	for i := range u {
		u[i] = 0xff
	}
	if got, want := formatUUID(u), "ffffffff-ffff-4fff-bfff-ffffffffffff"; got != want {
		t.Errorf("got %s, want %s", got, want)
	}
	if got, want := formatUUID([16]byte{}), "00000000-0000-4000-8000-000000000000"; got != want {
		t.Errorf("got %s, want %s", got, want)
	}
}

func BenchmarkNewRequestID(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		newRequestID()
	}
}
