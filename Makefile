# dh3: Lua client for the DH3 image-generation API (Lua 5.1 to 5.4, LuaJIT 2.1).
#   make          build dh3/core.so (installs missing Debian packages first)
#   make test     run every busted spec against this tree's build
#   make LUA=luajit [test]   the same for another Lua: lua5.1, lua5.2, lua5.3, luajit (see below)
#   make demo     generate a real image end to end against a local dh3-emulator
#   make asan     the spec suite under AddressSanitizer + UBSan
#   make valgrind the spec suite under valgrind memcheck
#   make bench    benchmarks (bench/README.md)
#   make fuzz     the libFuzzer harnesses, FUZZ_SECONDS each (fuzz/README.md)
#   make embed    build/embed/libdh3.a, dh3 for C hosts that embed Lua 5.4, and its example host
#   make env      shell exports to use this tree from anywhere: eval "$(make -s env)"
# Every path and tool is an overridable variable.

# The Lua to build for and test under: lua5.4 (the default), lua5.3, lua5.2, lua5.1 or luajit,
# by name or path. Its pkg-config name is its name. Each builds in a place of its own, so the
# builds for several Luas stay side by side:
#   lua5.4   objects in build/,           the module dh3/core.so (what bin/, make env, the
#                                          examples and the benchmarks use)
#   others   objects in build/LUA/obj/,   the module build/LUA/dh3/core.so
# `make test LUA=...` runs busted under that Lua against that module (DH3_SPEC_CPATH, read by
# spec/helpers/preload.lua, says where it is; busted's --ignore-lua keeps .busted's lua5.4 out).
LUA          ?= lua5.4
LUA_NAME     ?= $(notdir $(LUA))
LUA_PC       ?= $(LUA_NAME)
# the Lua version its C modules are built for (LuaJIT: 5.1), as luarocks --lua-version says it
LUA_ABI      ?= $(patsubst lua%,%,$(subst luajit,5.1,$(LUA_NAME)))
ifeq ($(LUA_NAME),lua5.4)
LUA_BUILD    ?= build
CORE_DIR     ?= .
else
LUA_BUILD    ?= build/$(LUA_NAME)/obj
CORE_DIR     ?= build/$(LUA_NAME)
endif
PKG_CONFIG   ?= pkg-config
CC           ?= cc
BUSTED       ?= /usr/bin/busted
LUAROCKS     ?= luarocks
LUA_CFLAGS   ?= $(shell $(PKG_CONFIG) --cflags $(LUA_PC) 2>/dev/null)
CURL_CFLAGS  ?= $(shell $(PKG_CONFIG) --cflags libcurl 2>/dev/null)
CURL_LIBS    ?= $(shell $(PKG_CONFIG) --libs libcurl 2>/dev/null)
WARN         ?= -std=c99 -Wall -Wextra -pedantic -Wshadow -Wmissing-prototypes -Wstrict-prototypes -Werror
OPT          ?= -O2 -g
CFLAGS       ?= $(OPT)
ALL_CFLAGS    = $(WARN) -fPIC -fvisibility=hidden $(CFLAGS) $(LUA_CFLAGS) $(CURL_CFLAGS)
LDFLAGS      ?=
SPECS        ?= spec
SPEC_JOBS    ?= 8
SPEC_TIMEOUT ?= 900
DH3_SPEC_GC  ?=
BUSTED_ARGS  ?=

# Debian packages the project needs: to build, to test, and for the emulator and the command line.
# Every Lua the core builds for comes with its headers (make LUA=..., and the rockspec spec
# installs the rock for 5.1 and loads it in LuaJIT); Debian's lua-cjson, lua-socket and
# lua-busted serve all of them.
LUAS_DEB_PACKAGES ?= lua5.1 liblua5.1-0-dev lua5.2 liblua5.2-dev lua5.3 liblua5.3-dev \
                     luajit libluajit-5.1-dev
# The engines the specs run dh3 in: LÖVE under a virtual X server (spec/love_spec.lua), a C
# host that links Lua 5.4 and lua-cjson statically (make embed, spec/embed_spec.lua), and luv's
# loop, bare (spec/luv_spec.lua) and in Neovim (spec/nvim_spec.lua): for tests and the optional
# dh3.luv only, never needed at run time.
DEB_PACKAGES ?= lua5.4 liblua5.4-dev libcurl4-openssl-dev lua-cjson lua-cjson-dev lua-busted lua-socket \
                lua-zlib lua-argparse luarocks pkg-config gcc make tmux lua-sec openssl lua-check bc \
                $(LUAS_DEB_PACKAGES)
# Only the specs need these (the engines dh3 is proven in: LÖVE under Xvfb, Neovim, luv): installed
# by `make test` (and asan, valgrind) the way `make deps` installs the rest, not by `make`.
ENGINE_DEB_PACKAGES ?= love xvfb xauth lua-luv neovim
TEST_DEPS_STAMP     ?= .deps-test-ok
DEPS_STAMP   ?= .deps-ok

SRCS    = $(wildcard src/*.c)
HEADERS = $(wildcard src/*.h)
OBJDIR  ?= $(LUA_BUILD)
OBJS    = $(SRCS:src/%.c=$(OBJDIR)/%.o)
CORE    = $(CORE_DIR)/dh3/core.so
# what `make test` and friends give the specs: where this Lua's dh3.core is
SPEC_ENV ?= DH3_SPEC_CPATH='$(CORE_DIR)/?.so'

.PHONY: all deps test-deps test demo asan valgrind bench clean rock fuzz smoke lint embed

all: $(DEPS_STAMP) $(CORE)

# Installs what is missing (as root), or says the exact apt-get line and stops. Checked again
# whenever the Makefile changes (a package added to the lists).
$(DEPS_STAMP): Makefile
	@missing=""; for p in $(DEB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing) >/dev/null || exit 1; \
	  else \
	    echo "dh3 needs these Debian packages:$$missing"; \
	    echo "run: sudo apt-get install -y$$missing"; exit 1; \
	  fi; \
	fi; touch $@

deps:
	@rm -f $(DEPS_STAMP); $(MAKE) --no-print-directory $(DEPS_STAMP)

test-deps:
	@$(MAKE) --no-print-directory $(TEST_DEPS_STAMP) DEPS_STAMP=$(TEST_DEPS_STAMP) DEB_PACKAGES="$(ENGINE_DEB_PACKAGES)"

$(OBJDIR)/%.o: src/%.c $(HEADERS) | $(DEPS_STAMP)
	@mkdir -p $(OBJDIR)
	$(CC) $(ALL_CFLAGS) -c $< -o $@

$(CORE): $(OBJS)
	@mkdir -p $(@D)
	$(CC) -shared $(LDFLAGS) -o $@ $(OBJS) $(CURL_LIBS)

# The spec files run SPEC_JOBS at a time (spec/run.sh), each cut at SPEC_TIMEOUT seconds. Most of
# a spec's time is spent waiting on emulators and child processes, so more files than cores run.
test: all test-deps
	$(SPEC_ENV) DH3_SPEC_LUA='$(LUA)' spec/run.sh $(SPEC_JOBS) $(SPEC_TIMEOUT) $(LUA) $(BUSTED) --ignore-lua $(BUSTED_ARGS) -- $(SPECS)

demo: all
	$(LUA) examples/demo.lua

# Prints the shell lines that make `lua5.4 my_script.lua` find this tree's dh3 (and the dh3 and
# dh3-emulator commands on PATH), from any folder: eval "$(make -s env)"; `make -s env LUA=...`
# for another Lua's build. The tree goes in front of whatever the variables hold, or of Lua's
# defaults (";;"). Lua 5.2 to 5.4 read their _5_N variables first; 5.1 and LuaJIT read plain
# LUA_PATH (LUA_ENV_SUFFIX empty).
LUA_ENV_SUFFIX ?= $(if $(filter 5.1,$(LUA_ABI)),,_$(subst .,_,$(LUA_ABI)))
ENV_CPATH      ?= $(if $(filter .,$(CORE_DIR)),$(CURDIR),$(CURDIR)/$(CORE_DIR))/?.so
.PHONY: env
env:
	@test -f $(CORE) || echo "dh3: $(CORE) is not built yet: run make$(if $(filter lua5.4,$(LUA_NAME)),, LUA=$(LUA)) first" >&2
	@echo 'export LUA_PATH$(LUA_ENV_SUFFIX)='\''$(CURDIR)/lua/?.lua;$(CURDIR)/lua/?/init.lua;'\''"$${LUA_PATH$(LUA_ENV_SUFFIX):-;}"'
	@echo 'export LUA_CPATH$(LUA_ENV_SUFFIX)='\''$(ENV_CPATH);'\''"$${LUA_CPATH$(LUA_ENV_SUFFIX):-;}"'
	@echo 'export PATH='\''$(CURDIR)/bin:'\''"$$PATH"'

# Sanitizers: a separate build (objects in ASAN_OBJDIR), loaded into the plain interpreter with
# the ASan runtime preloaded; it takes the place of this Lua's module for the run.
ASAN_FLAGS = -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined
ifeq ($(LUA_NAME),lua5.4)
ASAN_OBJDIR ?= build-asan
else
ASAN_OBJDIR ?= build-asan/$(LUA_NAME)
endif
asan: $(DEPS_STAMP) test-deps
	$(MAKE) --no-print-directory clean-core
	$(MAKE) --no-print-directory $(CORE) OBJDIR=$(ASAN_OBJDIR) CFLAGS="$(ASAN_FLAGS)" LDFLAGS="-fsanitize=address,undefined"
	DH3_SPEC_GC=$(DH3_SPEC_GC) $(SPEC_ENV) spec/run.sh $(CHECK_JOBS) $(CHECK_TIMEOUT) \
	  env LD_PRELOAD="$$($(CC) -print-file-name=libasan.so):$$($(CC) -print-file-name=libubsan.so)" \
	  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  LSAN_OPTIONS=suppressions=$(CURDIR)/spec/lsan.supp:print_suppressions=0 \
	  $(LUA) $(BUSTED) --ignore-lua $(BUSTED_ARGS) -- $(SPECS); \
	  rc=$$?; $(MAKE) --no-print-directory clean-core; exit $$rc

# The rock installed from the rockspec into a fresh tree for this Lua (luarocks --lua-version), then
# spec/smoke.lua run from that install: create, wait, download and spawned coroutines against an
# emulator. CI runs it for the Luas whose whole suite it does not run.
# (luarocks make builds in the folder it is run from: a copy of the sources, so that the build of
# another Lua does not land on this tree's dh3/core.so)
smoke: $(DEPS_STAMP)
	@tree=$$(mktemp -d) && mkdir $$tree/src && cp -r src lua bin library rockspec $$tree/src/ && \
	if ! (cd $$tree/src && $(LUAROCKS) --lua-version=$(LUA_ABI) --tree=$$tree make --deps-mode=none \
	    rockspec/dh3-scm-1.rockspec) > $$tree/install.log 2>&1; then \
	  cat $$tree/install.log; rm -rf $$tree; echo "0 passed, 1 failed"; exit 1; fi; \
	$(LUA) -e "package.path = '$$tree/share/lua/$(LUA_ABI)/?.lua;$$tree/share/lua/$(LUA_ABI)/?/init.lua;' .. package.path; \
	  package.cpath = '$$tree/lib/lua/$(LUA_ABI)/?.so;' .. package.cpath" spec/smoke.lua $$tree; \
	rc=$$?; rm -rf $$tree; exit $$rc

# luacheck (.luacheckrc) over the library, the commands, the specs and the examples: no warnings.
lint: $(DEPS_STAMP)
	luacheck --no-color -q lua bin spec examples

# Under the sanitizers and valgrind a run is several times slower: fewer at once, more time each.
CHECK_JOBS    ?= 2
CHECK_TIMEOUT ?= 1800
valgrind: all test-deps
	DH3_SPEC_GC=$(DH3_SPEC_GC) $(SPEC_ENV) spec/run.sh $(CHECK_JOBS) $(CHECK_TIMEOUT) \
	  valgrind --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite \
	  --suppressions=spec/valgrind.supp --trace-children=no \
	  $(LUA) $(BUSTED) --ignore-lua $(BUSTED_ARGS) -- $(SPECS)

# Benchmarks against peers (bench/README.md); not part of test or CI. Installs what it needs the
# way `make deps` does (the same rule, with the bench's packages and stamp). BENCH_QUICK=1: a smoke run.
BENCH_DEB_PACKAGES ?= nginx wrk hyperfine python3-requests lua-socket lua-cjson curl
BENCH_DEPS_STAMP   ?= bench/.deps-ok
bench: all
	@$(MAKE) --no-print-directory $(BENCH_DEPS_STAMP) DEPS_STAMP=$(BENCH_DEPS_STAMP) DEB_PACKAGES="$(BENCH_DEB_PACKAGES)"
	LUA=$(LUA) CC=$(CC) BENCH_CORE=$(CORE) lua5.4 bench/run.lua

# Fuzzing (fuzz/README.md): libFuzzer + ASan + UBSan harnesses over the response path, the JSON
# bridge and the webhook parser, built in FUZZ_DIR from the core's sources (dh3/core.so is not
# touched). Each runs FUZZ_SECONDS from its seed corpus fuzz/corpus/<name>/, which stays as it is:
# new inputs go to a temporary folder, merged into the corpus (-merge=1) only with FUZZ_MERGE=1.
# A crash, leak, timeout or sanitizer report fails the target and names the reproducer; replay
# one with `FUZZ_DIR/<name> <file>`. Installs its compiler the way `make deps` does.
FUZZ_CC         ?= clang-14
FUZZ_PACKAGES   ?= clang-14 libclang-rt-14-dev
FUZZ_DIR        ?= build-fuzz
FUZZ_ROOT       ?= $(CURDIR)
FUZZ_DEPS_STAMP ?= $(FUZZ_DIR)/.deps-ok
FUZZ_TARGETS    ?= response json webhook
FUZZ_SECONDS    ?= 60
FUZZ_MAX_LEN    ?= 20000
FUZZ_MERGE      ?= 0
FUZZ_ARGS       ?=
FUZZ_SANITIZE   ?= -fsanitize=address,undefined -fno-sanitize-recover=undefined
# the harnesses embed Lua 5.4 (fuzz/common.c), whatever LUA says
FUZZ_LUA_PC     ?= lua5.4
FUZZ_CFLAGS     ?= $(WARN) -O1 -g -fno-omit-frame-pointer $(FUZZ_SANITIZE) -fsanitize=fuzzer-no-link \
                   $(shell $(PKG_CONFIG) --cflags $(FUZZ_LUA_PC) 2>/dev/null) $(CURL_CFLAGS)
FUZZ_LUA_LIBS   ?= $(shell $(PKG_CONFIG) --libs $(FUZZ_LUA_PC) 2>/dev/null)
FUZZ_LUA_CPATH  ?= /usr/lib/$(shell $(CC) -print-multiarch 2>/dev/null)/lua/5.4/?.so
FUZZ_ENV        ?= ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
FUZZ_OBJS        = $(SRCS:src/%.c=$(FUZZ_DIR)/src/%.o) $(FUZZ_DIR)/fuzz/common.o
FUZZ_BINS        = $(FUZZ_TARGETS:%=$(FUZZ_DIR)/%)

fuzz: $(DEPS_STAMP)
	@mkdir -p $(FUZZ_DIR)
	@$(MAKE) --no-print-directory $(FUZZ_DEPS_STAMP) DEPS_STAMP=$(FUZZ_DEPS_STAMP) DEB_PACKAGES="$(FUZZ_PACKAGES)"
	@$(MAKE) --no-print-directory $(FUZZ_BINS)
	@rc=0; for t in $(FUZZ_TARGETS); do \
	  new=$$(mktemp -d) || exit 1; art=$(FUZZ_DIR)/artifacts/$$t-$$(date +%Y%m%d-%H%M%S); mkdir -p $$art; \
	  echo "fuzz: $$t for $(FUZZ_SECONDS)s from fuzz/corpus/$$t"; \
	  $(FUZZ_ENV) DH3_FUZZ_ROOT=$(FUZZ_ROOT) $(FUZZ_DIR)/$$t -max_total_time=$(FUZZ_SECONDS) \
	    -max_len=$(FUZZ_MAX_LEN) -timeout=10 -dict=fuzz/dh3.dict -artifact_prefix=$$art/ \
	    -print_final_stats=1 $(FUZZ_ARGS) $$new fuzz/corpus/$$t; r=$$?; \
	  if [ $$r -ne 0 ]; then \
	    rc=1; for f in $$art/*; do [ -e "$$f" ] && echo "fuzz: $$t FAILED (exit $$r); reproducer: $$f; replay: $(FUZZ_DIR)/$$t $$f"; done; \
	  else \
	    rmdir $$art; \
	    if [ "$(FUZZ_MERGE)" = 1 ]; then \
	      $(FUZZ_ENV) DH3_FUZZ_ROOT=$(FUZZ_ROOT) $(FUZZ_DIR)/$$t -merge=1 -max_len=$(FUZZ_MAX_LEN) \
	        fuzz/corpus/$$t $$new || rc=1; \
	    fi; \
	  fi; \
	  rm -rf $$new; \
	done; \
	if [ $$rc -ne 0 ]; then echo "fuzz: FAILED"; else echo "fuzz: no crash in $(FUZZ_TARGETS)"; fi; exit $$rc

$(FUZZ_DIR)/src/%.o: src/%.c $(HEADERS)
	@mkdir -p $(@D)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -c $< -o $@

$(FUZZ_DIR)/fuzz/%.o: fuzz/%.c fuzz/fuzz.h $(HEADERS)
	@mkdir -p $(@D)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -Isrc -DDH3_FUZZ_ROOT='"$(CURDIR)"' -DDH3_FUZZ_CPATH='"$(FUZZ_LUA_CPATH)"' -c $< -o $@

$(FUZZ_BINS): $(FUZZ_DIR)/%: $(FUZZ_DIR)/fuzz/%.o $(FUZZ_OBJS)
	$(FUZZ_CC) $(FUZZ_SANITIZE) -fsanitize=fuzzer -o $@ $^ $(FUZZ_LUA_LIBS) $(CURL_LIBS)

# A static library for C hosts that embed Lua 5.4 (README: "Embedding in a C host"): the C core,
# the Lua layer compiled in as Lua 5.4 bytecode (embed/bundle.lua) and luaopen_dh3
# (embed/dh3_embed.c), in EMBED_DIR/libdh3.a; and examples/embed/host.c linked with it, a static
# Lua 5.4 and Debian's static lua-cjson, as EMBED_DIR/host. The module build is not touched. The
# command line (lua/dh3/cli*) and the emulator are left out.
EMBED_DIR        ?= build/embed
EMBED_LUA        ?= lua5.4
EMBED_LUA_PC     ?= lua5.4
EMBED_LUA_CFLAGS ?= $(shell $(PKG_CONFIG) --cflags $(EMBED_LUA_PC) 2>/dev/null)
EMBED_LUA_A      ?= $(shell $(CC) -print-file-name=liblua5.4.a)
EMBED_CJSON_A    ?= $(shell $(CC) -print-file-name=liblua5.4-cjson.a)
EMBED_CFLAGS      = $(WARN) -fPIC -fvisibility=hidden $(CFLAGS) $(EMBED_LUA_CFLAGS) $(CURL_CFLAGS) -Iembed
EMBED_MODULES     = $(filter-out lua/dh3/cli.lua,$(wildcard lua/dh3/*.lua))
EMBED_OBJS        = $(SRCS:src/%.c=$(EMBED_DIR)/obj/%.o) $(EMBED_DIR)/obj/dh3_embed.o $(EMBED_DIR)/obj/dh3_modules.o
EMBED_LIB         = $(EMBED_DIR)/libdh3.a

embed: $(DEPS_STAMP) $(EMBED_LIB) $(EMBED_DIR)/host

$(EMBED_DIR)/obj/%.o: src/%.c $(HEADERS) | $(DEPS_STAMP)
	@mkdir -p $(@D)
	$(CC) $(EMBED_CFLAGS) -c $< -o $@

$(EMBED_DIR)/obj/dh3_embed.o: embed/dh3_embed.c embed/dh3_embed.h
	@mkdir -p $(@D)
	$(CC) $(EMBED_CFLAGS) -c $< -o $@

$(EMBED_DIR)/dh3_modules.c: embed/bundle.lua $(EMBED_MODULES) lua/dh3
	@mkdir -p $(@D)
	$(EMBED_LUA) embed/bundle.lua $@ $(EMBED_MODULES)

$(EMBED_DIR)/obj/dh3_modules.o: $(EMBED_DIR)/dh3_modules.c embed/dh3_embed.h
	@mkdir -p $(@D)
	$(CC) $(EMBED_CFLAGS) -c $< -o $@

$(EMBED_LIB): $(EMBED_OBJS)
	rm -f $@
	ar rcs $@ $(EMBED_OBJS)

$(EMBED_DIR)/host: examples/embed/host.c embed/dh3_embed.h $(EMBED_LIB)
	$(CC) $(EMBED_CFLAGS) -o $@ $< $(EMBED_LIB) $(EMBED_CJSON_A) $(EMBED_LUA_A) $(CURL_LIBS) -lm -ldl

rock: all
	$(LUAROCKS) --lua-version=$(LUA_ABI) make --deps-mode=none rockspec/dh3-scm-1.rockspec

clean-core:
	rm -f $(CORE)

# every Lua's build
clean:
	rm -rf $(OBJDIR) build build-asan dh3 $(DEPS_STAMP) $(TEST_DEPS_STAMP)
