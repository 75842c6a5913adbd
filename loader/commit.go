package loader

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
)

// backupSuffix names a pin that Commit moved aside, until it succeeds (bpffs
// takes no dots in names; map names have no hyphens).
const backupSuffix = "-xlb-old"

type pinner interface {
	Pin(path string) error
	Unpin() error
}

// pinSwap replaces pins undoably: each one replaced is moved aside to
// path+backupSuffix first, and only removed by finish.
type pinSwap struct {
	done []swapped
}

type swapped struct {
	path  string
	obj   pinner
	moved bool // an old pin was moved aside
}

// replace pins obj at path, in place of whatever was pinned there.
func (s *pinSwap) replace(obj pinner, path string) error {
	moved := false
	if err := os.Rename(path, path+backupSuffix); err == nil {
		moved = true
	} else if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("move the old pin aside: %w", err)
	}
	if err := obj.Pin(path); err != nil {
		if moved {
			err = errors.Join(err, os.Rename(path+backupSuffix, path))
		}
		return err
	}
	s.done = append(s.done, swapped{path, obj, moved})
	return nil
}

// remove moves the pin at path aside (nothing there: nothing to do): it
// goes with finish, and comes back with rollback.
func (s *pinSwap) remove(path string) error {
	if err := os.Rename(path, path+backupSuffix); errors.Is(err, os.ErrNotExist) {
		return nil
	} else if err != nil {
		return fmt.Errorf("move the old pin aside: %w", err)
	}
	s.done = append(s.done, swapped{path: path, moved: true})
	return nil
}

// rollback unpins what replace pinned and puts the old pins back.
func (s *pinSwap) rollback() error {
	var errs []error
	for _, d := range s.done {
		if d.obj != nil { // nil: removed, not replaced
			errs = append(errs, d.obj.Unpin())
		}
		if d.moved {
			errs = append(errs, os.Rename(d.path+backupSuffix, d.path))
		}
	}
	s.done = nil
	return errors.Join(errs...)
}

// finish removes the old pins moved aside (their objects go once nothing
// else holds them).
func (s *pinSwap) finish() error {
	var errs []error
	for _, d := range s.done {
		if d.moved {
			errs = append(errs, os.Remove(d.path+backupSuffix))
		}
	}
	s.done = nil
	return errors.Join(errs...)
}

// restoreMovedPins deals with the pins a Commit that never finished (its
// daemon killed) left moved aside in dir: one whose place is empty goes
// back, the others (replaced already) go.
func restoreMovedPins(dir string, log *slog.Logger) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("read pin directory: %w", err)
	}
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), backupSuffix)
		if !ok {
			continue
		}
		path := filepath.Join(dir, name)
		if _, err := os.Lstat(path); errors.Is(err, os.ErrNotExist) {
			err = os.Rename(path+backupSuffix, path)
			log.Warn("put back a pin an unfinished start had moved aside", "pin", path, "err", err)
		} else if err := os.Remove(path + backupSuffix); err != nil {
			// Not ours to fail on (a directory someone made): it stays.
			log.Warn("cannot remove what an unfinished start moved aside", "pin", path+backupSuffix, "err", err)
		}
	}
	return nil
}
