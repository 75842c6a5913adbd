package loader

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// bpffsRoot is the conventional bpffs mount point. Like bpftool and Cilium,
// xlb mounts it when it is missing (fresh hosts often lack it); any other pin
// directory must already be on a bpffs.
const bpffsRoot = "/sys/fs/bpf"

// ensureBPFFS makes sure dir is (or will be created) on a mounted bpffs.
func ensureBPFFS(dir string, log *slog.Logger) error {
	p := filepath.Clean(dir)
	for {
		var st unix.Statfs_t
		if err := unix.Statfs(p, &st); err == nil {
			if st.Type == unix.BPF_FS_MAGIC {
				return nil
			}
			if p == bpffsRoot {
				if err := unix.Mount("bpf", bpffsRoot, "bpf", 0, "mode=0700"); err != nil {
					return fmt.Errorf("%s: %w: mount bpffs on %s: %v", dir, ErrNoBPFFS, bpffsRoot, err)
				}
				log.Info("mounted bpffs", "path", bpffsRoot)
				return nil
			}
			return fmt.Errorf("%s: %w (mount one: mount -t bpf bpf %s)", dir, ErrNoBPFFS, p)
		}
		parent := filepath.Dir(p)
		if parent == p {
			return fmt.Errorf("%s: %w", dir, ErrNoBPFFS)
		}
		p = parent
	}
}

// mkdirOwned is os.MkdirAll, telling whether dir itself was created.
func mkdirOwned(dir string) (bool, error) {
	if _, err := os.Stat(dir); err == nil {
		return false, nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return false, fmt.Errorf("create pin directory: %w", err)
	}
	return true, nil
}
