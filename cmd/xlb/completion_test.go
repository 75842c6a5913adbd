package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/xlb-dev/xlb/internal/testenv"
)

func completionScript(t *testing.T, shell string) string {
	t.Helper()
	var out, errb bytes.Buffer
	if code := run([]string{"completion", shell}, &out, &errb); code != 0 {
		t.Fatalf("xlb completion %s: exit %d: %s", shell, code, errb.String())
	}
	return out.String()
}

// TestCompletionCoversTheCLI: both scripts name every command, every
// subcommand and every flag of each, as the command table and the flag
// sets define them; every command dispatches; and the usage text lists
// exactly the commands of the table.
func TestCompletionCoversTheCLI(t *testing.T) {
	scripts := map[string]string{"bash": completionScript(t, "bash"), "zsh": completionScript(t, "zsh")}
	model := completionModel()
	if len(model) != len(commands()) {
		t.Fatalf("%d commands in the model, %d in the table", len(model), len(commands()))
	}
	for _, c := range model {
		if code := run([]string{c.name, "--help"}, &bytes.Buffer{}, &bytes.Buffer{}); code != 0 {
			t.Errorf("xlb %s --help: exit %d", c.name, code)
		}
		all := append([]compCmd{c}, c.subs...)
		for _, cc := range all {
			for shell, s := range scripts {
				word := regexp.MustCompile(`(^|[\s"'(])` + regexp.QuoteMeta(cc.name) + `([\s"':)/]|$)`)
				if !word.MatchString(s) {
					t.Errorf("%s completion lacks %q", shell, cc.name)
				}
				for _, f := range cc.flags {
					if !strings.Contains(s, f.spelling()) {
						t.Errorf("%s completion lacks %s's flag %s", shell, cc.name, f.spelling())
					}
				}
			}
			if len(cc.flags) < 1 && cc.subs == nil {
				t.Errorf("%s: no flags read (not even --help)", cc.name)
			}
		}
	}
	// Flags are really read: a few known ones.
	for _, want := range []string{"--keep-datapath", "--bpffs", "--json", "--weight", "--vip", "--header"} {
		if !strings.Contains(scripts["bash"], want) {
			t.Errorf("bash completion lacks %s", want)
		}
	}
	var inUsage []string
	for _, m := range regexp.MustCompile(`(?m)^  xlb ([a-z]+)`).FindAllStringSubmatch(usage, -1) {
		inUsage = append(inUsage, m[1])
	}
	var inTable []string
	for _, c := range commands() {
		inTable = append(inTable, c.name)
	}
	slices.Sort(inUsage)
	slices.Sort(inTable)
	if !slices.Equal(slices.Compact(inUsage), inTable) {
		t.Errorf("commands in the usage text %v, in the table %v", inUsage, inTable)
	}
	var out, errb bytes.Buffer
	if code := run([]string{"completion", "fish"}, &out, &errb); code != 2 {
		t.Errorf("xlb completion fish: exit %d, want 2", code)
	}
}

// TestBashCompletion sources the bash script and completes as bash would.
func TestBashCompletion(t *testing.T) {
	testenv.RequireTool(t, "bash", "bash")
	path := filepath.Join(t.TempDir(), "xlb.bash")
	if err := os.WriteFile(path, []byte(completionScript(t, "bash")), 0o644); err != nil {
		t.Fatal(err)
	}
	complete := func(words ...string) string {
		t.Helper()
		var quoted []string
		for _, w := range words {
			quoted = append(quoted, "'"+w+"'")
		}
		script := "source " + path + "; COMP_WORDS=(" + strings.Join(quoted, " ") + "); COMP_CWORD=" +
			strconv.Itoa(len(words)-1) + `; _xlb; echo "${COMPREPLY[*]}"`
		out, err := exec.Command("bash", "--norc", "--noprofile", "-c", script).CombinedOutput()
		if err != nil {
			t.Fatalf("bash: %v: %s", err, out)
		}
		return strings.TrimSpace(string(out))
	}
	var names []string
	for _, c := range commands() {
		names = append(names, c.name)
	}
	for _, tc := range []struct {
		words []string
		want  string
	}{
		{[]string{"xlb", ""}, strings.Join(append(names, "help"), " ")},
		{[]string{"xlb", "node", "st"}, "status"},
		{[]string{"xlb", "ba"}, "backend"},
		{[]string{"xlb", "backend", ""}, "add drain list ready remove help"},
		{[]string{"xlb", "backend", "drain", "--a"}, "--admin"},
		{[]string{"xlb", "status", "--json", "--b"}, "--bpffs"},
		{[]string{"xlb", "completion", "z"}, "zsh"},
		{[]string{"xlb", "help", "si"}, "sidecar"},
		{[]string{"xlb", "backend", "add", "--service", "web", "--w"}, "--weight"},
		{[]string{"xlb", "decap", "--vip", ""}, ""}, // a value: nothing to offer
	} {
		if got := complete(tc.words...); got != tc.want {
			t.Errorf("complete %q = %q, want %q", tc.words, got, tc.want)
		}
	}
}

// TestZshCompletionSyntax: zsh parses the zsh script (zsh is in make
// deps; without it the test skips, except in CI).
func TestZshCompletionSyntax(t *testing.T) {
	testenv.RequireTool(t, "zsh", "zsh")
	path := filepath.Join(t.TempDir(), "_xlb")
	if err := os.WriteFile(path, []byte(completionScript(t, "zsh")), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("zsh", "-n", path).CombinedOutput(); err != nil {
		t.Errorf("zsh -n: %v: %s", err, out)
	}
}
