// Package procs starts the processes of a benchmark, each logging to a file
// of its own, and stops all of them by PID when the benchmark ends.
package procs

import (
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"
)

// Group is the processes one benchmark started.
type Group struct {
	dir   string // where the logs go
	procs []*exec.Cmd
}

// New returns a Group whose processes log to files in dir.
func New(dir string) *Group { return &Group{dir: dir} }

// Start starts name with args, its output to dir/logName.
func (g *Group) Start(logName, name string, args ...string) (*exec.Cmd, error) {
	cmd := exec.Command(name, args...)
	logf, err := os.Create(filepath.Join(g.dir, logName))
	if err != nil {
		return nil, err
	}
	defer logf.Close() // the child has its own descriptor
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	g.procs = append(g.procs, cmd)
	return cmd, nil
}

// StopAll sends SIGTERM to every process started and waits for each, with
// SIGKILL for one still running after 5 s.
func (g *Group) StopAll() {
	for _, p := range g.procs {
		p.Process.Signal(syscall.SIGTERM)
	}
	for _, p := range g.procs {
		done := make(chan struct{})
		go func() { p.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			p.Process.Kill()
			<-done
		}
	}
}
