// test/test_walkthrough.c: WALKTHROUGH.md names real code. Every function it writes as
// `name()` (a name and "()" alone in backticks, outside ``` blocks) must be defined in the
// sources (*.c, *.h, *.cu, dev/*.c): a line starting at column 0 that holds `name(`, whose
// parenthesis closes before a `{`. It also must not cite line numbers (file.c:123), which rot.
#include "test.h"
#include <glob.h>
#include <ctype.h>

#define MAX_NAMES 512
#define MAX_FILES 64

static int is_ident(int c) { return isalnum(c) || c == '_'; }

// the names written as `name()` in md, deduplicated, in order of first appearance
static int extract_names(const char* md, char names[][96], int max) {
    int n = 0;
    const char* p = md;
    while ((p = strchr(p, '`')) != NULL) {
        if (strncmp(p, "```", 3) == 0) {   // a code block: skip to its closing fence
            const char* end = strstr(p + 3, "```");
            if (!end) break;
            p = end + 3;
            continue;
        }
        const char* end = strchr(p + 1, '`');
        if (!end) break;
        size_t len = (size_t)(end - p - 1);
        const char* s = p + 1;
        if (len > 2 && len < 96 && s[len - 2] == '(' && s[len - 1] == ')' && (isalpha((unsigned char)s[0]) || s[0] == '_')) {
            size_t k = 0;
            while (k < len - 2 && is_ident((unsigned char)s[k])) k++;
            if (k == len - 2) {
                char name[96];
                memcpy(name, s, k);
                name[k] = '\0';
                int seen = 0;
                for (int i = 0; i < n; i++) seen |= strcmp(names[i], name) == 0;
                if (!seen && n < max) strcpy(names[n++], name);
            }
        }
        p = end + 1;
    }
    return n;
}

// is name defined in text: at the start of a line, "... name(" whose ')' is followed by '{'
static int defined_in(const char* text, const char* name) {
    size_t len = strlen(name);
    for (const char* p = strstr(text, name); p; p = strstr(p + 1, name)) {
        if (p > text && is_ident((unsigned char)p[-1])) continue;
        const char* q = p + len;
        while (*q == ' ') q++;
        if (*q != '(') continue;
        const char* line = p;
        while (line > text && line[-1] != '\n') line--;
        if (!(isalpha((unsigned char)line[0]) || line[0] == '_')) continue;   // indented, comment, #define
        int depth = 0;
        for (; *q; q++) {
            if (*q == '(') depth++;
            else if (*q == ')' && --depth == 0) break;
        }
        if (!*q) continue;
        q++;
        while (*q == ' ' || *q == '\n' || *q == '\t') q++;
        if (*q == '{') return 1;
    }
    return 0;
}

static char* sources[MAX_FILES];
static char* source_names[MAX_FILES];
static int n_sources = 0;

static void load_sources(void) {
    const char* patterns[] = {"*.c", "*.h", "*.cu", "dev/*.c"};
    for (int i = 0; i < 4; i++) {
        glob_t g;
        if (glob(patterns[i], 0, NULL, &g) != 0) continue;
        for (size_t j = 0; j < g.gl_pathc && n_sources < MAX_FILES; j++) {
            char* t = read_text(g.gl_pathv[j]);
            sources[n_sources] = t;
            source_names[n_sources] = strdup(g.gl_pathv[j]);
            n_sources++;
        }
        globfree(&g);
    }
}

// the file that defines name, or NULL
static const char* where_defined(const char* name) {
    for (int i = 0; i < n_sources; i++)
        if (defined_in(sources[i], name)) return source_names[i];
    return NULL;
}

int main(void) {
    char* md = read_text("WALKTHROUGH.md");
    CHECK(md[0] != 0, "cannot read WALKTHROUGH.md (run from the repository root)");
    if (!md[0]) return test_summary("test_walkthrough");
    load_sources();
    CHECK(n_sources >= 10, "found only %d source files", n_sources);

    static char names[MAX_NAMES][96];
    int n = extract_names(md, names, MAX_NAMES);
    CHECK(n >= 60, "only %d function names extracted from WALKTHROUGH.md", n);
    int missing = 0;
    for (int i = 0; i < n; i++) {
        const char* f = where_defined(names[i]);
        CHECK(f != NULL, "WALKTHROUGH.md names %s(), which no source file defines", names[i]);
        if (!f) missing++;
    }
    printf("%-4s %d function names in WALKTHROUGH.md, %d defined in the sources\n", missing ? "FAIL" : "ok", n, n - missing);

    // no line numbers: "ttt.c:123" style references rot as the code moves
    int cites = 0;
    for (const char* p = md; (p = strchr(p, ':')) != NULL; p++) {
        if (!isdigit((unsigned char)p[1])) continue;
        const char* q = p;
        while (q > md && is_ident((unsigned char)q[-1])) q--;
        if (q > md && q[-1] == '.' && (strncmp(q, "c:", 2) == 0 || strncmp(q, "h:", 2) == 0 || strncmp(q, "cu:", 3) == 0)) cites++;
    }
    CHECK(cites == 0, "WALKTHROUGH.md cites %d line numbers (file.c:N)", cites);

    // the checker can fail: a wrong name, a declaration without a body, a call inside a body
    CHECK(where_defined("swin_forwardd") == NULL, "a misspelt name counts as defined");
    CHECK(defined_in("void foo(int a);\n", "foo") == 0, "a declaration counts as a definition");
    CHECK(defined_in("int bar(void) {\n    foo(1);\n}\n", "foo") == 0, "a call counts as a definition");
    CHECK(defined_in("static int foo(int a,\n            int b) {\n", "foo") == 1, "a two-line signature is not found");
    char probe[8][96];
    int np = extract_names("`a_b()` `c` ```\n`in_code()`\n``` `d()` `e(x)`", probe, 8);
    CHECK(np == 2 && strcmp(probe[0], "a_b") == 0 && strcmp(probe[1], "d") == 0, "extraction found %d names", np);

    for (int i = 0; i < n_sources; i++) { free(sources[i]); free(source_names[i]); }
    free(md);
    return test_summary("test_walkthrough");
}
