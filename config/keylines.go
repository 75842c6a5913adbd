package config

import (
	"strconv"
	"strings"
)

// keyLines maps a field path (the same paths that appear in error messages,
// e.g. service[1].backend[0].address) to the line where that key, table
// header or inline table starts. The first definition wins.
type keyLines map[string]int

// line returns the line of path, or fallback when the path was never written
// (a missing key, or a Config built in code where keyLines is nil).
func (kl keyLines) line(path string, fallback int) int {
	if l, ok := kl[path]; ok {
		return l
	}
	return fallback
}

// joinPath appends a key to a field path, quoting keys that are not bare.
func joinPath(parent, key string) string {
	if !isBareKey(key) {
		key = strconv.Quote(key)
	}
	if parent == "" {
		return key
	}
	return parent + "." + key
}

// indexPath names the i-th element of the array at path.
func indexPath(path string, i int) string {
	return path + "[" + strconv.Itoa(i) + "]"
}

func isBareKey(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isBareKeyByte(s[i]) {
			return false
		}
	}
	return true
}

func isBareKeyByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-'
}

// scanKeyLines walks TOML source that BurntSushi/toml has already accepted
// and records the line of every key. It understands just enough TOML to
// follow the structure (headers, dotted and quoted keys, strings of every
// kind, arrays, inline tables, comments); values are skipped. On input it does
// not understand it still terminates, at worst with wrong or missing lines.
func scanKeyLines(src []byte) keyLines {
	s := &keyScanner{
		src:   src,
		line:  1,
		lines: keyLines{},
		last:  map[string]int{},
	}
	// The same byte order marks the decoder skips.
	for _, bom := range []string{"\xef\xbb\xbf", "\xff\xfe", "\xfe\xff"} {
		if strings.HasPrefix(string(src[:min(len(src), 3)]), bom) {
			s.pos = len(bom)
			break
		}
	}
	s.document()
	return s.lines
}

type keyScanner struct {
	src   []byte
	pos   int
	line  int
	lines keyLines
	// last is the index of the latest element of each array of tables, by
	// path: "service" -> 1 after the second [[service]], and
	// "service[1].backend" -> 0 after the first [[service.backend]] under it.
	last  map[string]int
	table string // path of the current [table]
}

func (s *keyScanner) eof() bool { return s.pos >= len(s.src) }

func (s *keyScanner) peek() byte {
	if s.eof() {
		return 0
	}
	return s.src[s.pos]
}

func (s *keyScanner) hasPrefix(p string) bool {
	return strings.HasPrefix(string(s.src[s.pos:min(len(s.src), s.pos+len(p))]), p)
}

// advance moves past one byte, counting lines.
func (s *keyScanner) advance() {
	if !s.eof() {
		if s.src[s.pos] == '\n' {
			s.line++
		}
		s.pos++
	}
}

func (s *keyScanner) record(path string, line int) {
	if _, ok := s.lines[path]; !ok {
		s.lines[path] = line
	}
}

// skipBlank skips spaces and tabs; with newlines also line breaks and comments.
func (s *keyScanner) skipBlank(newlines bool) {
	for !s.eof() {
		switch c := s.peek(); {
		case c == ' ' || c == '\t' || c == '\r':
			s.advance()
		case newlines && c == '\n':
			s.advance()
		case newlines && c == '#':
			s.skipComment()
		default:
			return
		}
	}
}

func (s *keyScanner) skipComment() {
	for !s.eof() && s.peek() != '\n' {
		s.advance()
	}
}

func (s *keyScanner) document() {
	for {
		s.skipBlank(true)
		if s.eof() {
			return
		}
		start := s.pos
		if s.peek() == '[' {
			s.header()
		} else {
			s.keyValue(s.table)
		}
		// Whatever follows on the line is a comment (or garbage the decoder
		// would have rejected).
		s.skipBlank(false)
		if s.peek() == '#' {
			s.skipComment()
		}
		if s.pos == start {
			s.advance()
		}
	}
}

// header reads [a.b] or [[a.b]] and makes it the current table.
func (s *keyScanner) header() {
	line := s.line
	array := s.hasPrefix("[[")
	if array {
		s.pos += 2
	} else {
		s.pos++
	}
	s.skipBlank(false)
	segs := s.key()
	s.skipBlank(false)
	if array && s.hasPrefix("]]") {
		s.pos += 2
	} else if !array && s.peek() == ']' {
		s.pos++
	}
	if len(segs) == 0 {
		return
	}
	path := s.resolve(segs[:len(segs)-1], line)
	path = joinPath(path, segs[len(segs)-1])
	if array {
		next := 0
		if i, ok := s.last[path]; ok {
			next = i + 1
		}
		s.last[path] = next
		s.record(path, line)
		path = indexPath(path, next)
	}
	s.record(path, line)
	s.table = path
}

// resolve turns header segments into a path, descending into the latest
// element of every array of tables on the way.
func (s *keyScanner) resolve(segs []string, line int) string {
	path := ""
	for _, seg := range segs {
		path = joinPath(path, seg)
		if i, ok := s.last[path]; ok {
			path = indexPath(path, i)
		}
		s.record(path, line)
	}
	return path
}

// keyValue reads key = value inside the table at prefix.
func (s *keyScanner) keyValue(prefix string) {
	line := s.line
	segs := s.key()
	if len(segs) == 0 {
		return
	}
	path := prefix
	for _, seg := range segs {
		path = joinPath(path, seg)
		s.record(path, line)
	}
	s.skipBlank(false)
	if s.peek() != '=' {
		return
	}
	s.pos++
	s.skipBlank(false)
	s.value(path)
}

// key reads a possibly dotted key and returns its segments.
func (s *keyScanner) key() []string {
	var segs []string
	for {
		s.skipBlank(false)
		var seg string
		switch s.peek() {
		case '"':
			raw := s.basicString()
			if u, err := strconv.Unquote(raw); err == nil {
				seg = u
			} else {
				seg = strings.Trim(raw, `"`)
			}
		case '\'':
			seg = strings.Trim(s.literalString(), "'")
		default:
			start := s.pos
			for !s.eof() && !strings.ContainsRune(" \t\r\n.=[]#,{}\"'", rune(s.peek())) {
				s.pos++
			}
			if s.pos == start {
				return segs
			}
			seg = string(s.src[start:s.pos])
		}
		segs = append(segs, seg)
		s.skipBlank(false)
		if s.peek() != '.' {
			return segs
		}
		s.pos++
	}
}

// value skips one value; arrays and inline tables record their elements
// and keys under path.
func (s *keyScanner) value(path string) {
	switch {
	case s.hasPrefix(`"""`):
		s.multiLineString(`"""`, true)
	case s.hasPrefix(`'''`):
		s.multiLineString(`'''`, false)
	case s.peek() == '"':
		s.basicString()
	case s.peek() == '\'':
		s.literalString()
	case s.peek() == '[':
		s.array(path)
	case s.peek() == '{':
		s.inlineTable(path)
	default:
		// Numbers, booleans, dates; a local date-time may contain a space.
		for !s.eof() && !strings.ContainsRune(",]}\n#", rune(s.peek())) {
			s.pos++
		}
	}
}

func (s *keyScanner) array(path string) {
	s.pos++ // [
	for i := 0; ; i++ {
		s.skipBlank(true)
		if s.eof() {
			return
		}
		if s.peek() == ']' {
			s.pos++
			return
		}
		start := s.pos
		elem := indexPath(path, i)
		s.record(elem, s.line)
		s.value(elem)
		s.skipBlank(true)
		if s.peek() == ',' {
			s.pos++
		} else if s.pos == start {
			s.advance()
		}
	}
}

func (s *keyScanner) inlineTable(path string) {
	s.pos++ // {
	for {
		s.skipBlank(true)
		if s.eof() {
			return
		}
		if s.peek() == '}' {
			s.pos++
			return
		}
		start := s.pos
		s.keyValue(path)
		s.skipBlank(true)
		if s.peek() == ',' {
			s.pos++
		} else if s.pos == start {
			s.advance()
		}
	}
}

// basicString skips "..." and returns it with its quotes.
func (s *keyScanner) basicString() string {
	start := s.pos
	s.pos++
	for !s.eof() {
		switch s.peek() {
		case '\\':
			s.pos++
			if !s.eof() && s.peek() != '\n' {
				s.pos++
			}
		case '"':
			s.pos++
			return string(s.src[start:s.pos])
		case '\n':
			return string(s.src[start:s.pos])
		default:
			s.pos++
		}
	}
	return string(s.src[start:s.pos])
}

// literalString skips '...' and returns it with its quotes.
func (s *keyScanner) literalString() string {
	start := s.pos
	s.pos++
	for !s.eof() {
		switch s.peek() {
		case '\'':
			s.pos++
			return string(s.src[start:s.pos])
		case '\n':
			return string(s.src[start:s.pos])
		default:
			s.pos++
		}
	}
	return string(s.src[start:s.pos])
}

// multiLineString skips a """ or ”' string, counting its lines.
func (s *keyScanner) multiLineString(delim string, escapes bool) {
	s.pos += len(delim)
	for !s.eof() {
		if escapes && s.peek() == '\\' {
			s.advance()
			s.advance()
			continue
		}
		if s.hasPrefix(delim) {
			s.pos += len(delim)
			// Up to two quotes right before the closing delimiter belong
			// to the content: """a""""" ends after five quotes.
			for n := 0; n < 2 && s.peek() == delim[0]; n++ {
				s.pos++
			}
			return
		}
		s.advance()
	}
}
