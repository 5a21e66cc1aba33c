// The emulator's executor: runs one dispatch of a kernel, every GPU thread
// a stackful fiber on the calling OS thread.
//
// Threadgroups run one at a time, in the order the launch asks for. Within
// a threadgroup, the scheduler resumes each ready thread until it blocks:
// at a SIMD-group function (tinyllm_emu_meet), at a barrier, or by
// returning. When every lane of a SIMD group waits at the same SIMD-group
// function, the function's combine step computes all their results; when
// every thread waits at the same barrier, they all go on. Anything else (a
// lane at another call, a lane that returned, a thread that never reaches
// the barrier) is a divergence, reported with the kernel, the threadgroup
// and the source lines, and the dispatch stops.
//
// Each SIMD group runs ahead of the others as far as it can (to a barrier
// or its end, through its SIMD-group functions), so a thread reads
// threadgroup memory before or after other groups write it depending on
// the order: running forward, backward and shuffled, with threadgroup
// memory poisoned with NaN, makes a missing barrier show.
#include "emu_abi.h"

#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <string>
#include <vector>

// Other architectures switch with glibc's ucontext (TINYLLM_EMU_UCONTEXT
// forces it, to test it here).
#if !defined(__x86_64__) || defined(TINYLLM_EMU_UCONTEXT)
#define EMU_UCONTEXT 1
#include <ucontext.h>
#endif

#define EXPORT extern "C" __attribute__((visibility("default")))

using namespace emu;

namespace {

// Each fiber's stack, with a guard page below it.
constexpr size_t STACK_BYTES = 128 * 1024;
// Apple GPUs' threadgroup memory.
constexpr u64 THREADGROUP_LIMIT = 32 * 1024;
constexpr u32 SIMD = 32;

// ---------------------------------------------------------------------------
// Context switch
// ---------------------------------------------------------------------------

#if !EMU_UCONTEXT

// tinyllm_emu_switch(save, to): saves the callee-saved registers, MXCSR and
// the x87 control word on the current stack, stores the stack pointer in
// *save, and resumes the context whose stack pointer is `to`.
// tinyllm_emu_fiber_start: a new fiber's first return address; it calls
// r13(r12) and never returns.
extern "C" void tinyllm_emu_switch(void **save, void *to);
extern "C" void tinyllm_emu_fiber_start();
asm(R"(
    .text
    .p2align 4
    .globl tinyllm_emu_switch
    .hidden tinyllm_emu_switch
    .type tinyllm_emu_switch,@function
tinyllm_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size tinyllm_emu_switch, .-tinyllm_emu_switch

    .p2align 4
    .globl tinyllm_emu_fiber_start
    .hidden tinyllm_emu_fiber_start
    .type tinyllm_emu_fiber_start,@function
tinyllm_emu_fiber_start:
    movq %r12, %rdi
    callq *%r13
    ud2
    .size tinyllm_emu_fiber_start, .-tinyllm_emu_fiber_start
)");

struct Context {
    void *sp = nullptr;
};

// Lays out a frame that tinyllm_emu_switch "returns" into: fn(arg) runs on
// the stack [lo, lo + size).
void make_context(Context &c, char *lo, size_t size, void (*fn)(void *), void *arg) {
    uintptr_t top = ((uintptr_t)(lo + size)) & ~(uintptr_t)15;
    u64 *p = (u64 *)top;
    unsigned mxcsr;
    unsigned short fpucw;
    asm volatile("stmxcsr %0" : "=m"(mxcsr));
    asm volatile("fnstcw %0" : "=m"(fpucw));
    p[-1] = (u64)(uintptr_t)&tinyllm_emu_fiber_start; // return address
    p[-2] = 0;                                         // rbp
    p[-3] = 0;                                         // rbx
    p[-4] = (u64)(uintptr_t)arg;                       // r12
    p[-5] = (u64)(uintptr_t)fn;                        // r13
    p[-6] = 0;                                         // r14
    p[-7] = 0;                                         // r15
    p[-8] = (u64)mxcsr | ((u64)fpucw << 32);
    c.sp = &p[-8];
}

inline void switch_context(Context &from, Context &to) {
    tinyllm_emu_switch(&from.sp, to.sp);
}

#else

// Other architectures: glibc's ucontext (slower: a system call per switch).
struct Context {
    ucontext_t uc;
};

thread_local void (*g_start_fn)(void *);
void fiber_trampoline(unsigned hi, unsigned lo) {
    void *arg = (void *)(((uintptr_t)hi << 32) | (uintptr_t)lo);
    g_start_fn(arg);
    abort();
}

void make_context(Context &c, char *lo, size_t size, void (*fn)(void *), void *arg) {
    getcontext(&c.uc);
    c.uc.uc_stack.ss_sp = lo;
    c.uc.uc_stack.ss_size = size;
    c.uc.uc_link = nullptr;
    g_start_fn = fn;
    uintptr_t a = (uintptr_t)arg;
    makecontext(&c.uc, (void (*)())fiber_trampoline, 2, (unsigned)(a >> 32),
                (unsigned)(a & 0xffffffffu));
}

inline void switch_context(Context &from, Context &to) {
    swapcontext(&from.uc, &to.uc);
}

#endif

// ---------------------------------------------------------------------------
// Fiber stacks, kept per OS thread and reused across dispatches
// ---------------------------------------------------------------------------

struct StackPool {
    char *base = nullptr;
    size_t count = 0;
    size_t page = 0;

    size_t slot() const { return STACK_BYTES + page; }

    // The stack of fiber i (of at least n), or null if memory ran out.
    bool reserve(size_t n) {
        if (n <= count) {
            return true;
        }
        release();
        page = (size_t)sysconf(_SC_PAGESIZE);
        void *p = mmap(nullptr, n * slot(), PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED) {
            return false;
        }
        base = (char *)p;
        count = n;
        for (size_t i = 0; i < n; ++i) {
            mprotect(base + i * slot(), page, PROT_NONE);
        }
        return true;
    }
    char *stack(size_t i) const { return base + i * slot() + page; }
    // Whether `p` is in one of the stacks' guard pages.
    bool in_guard(const void *p) const {
        const char *c = (const char *)p;
        if (!base || c < base || c >= base + count * slot()) {
            return false;
        }
        return (size_t)(c - base) % slot() < page;
    }
    void release() {
        if (base) {
            munmap(base, count * slot());
        }
        base = nullptr;
        count = 0;
    }
    ~StackPool() {
        release();
        free(alt);
    }
    // An alternate signal stack, for a fault on a guard page.
    char *alt = nullptr;
};

thread_local StackPool g_stacks;

// ---------------------------------------------------------------------------
// The state of a dispatch
// ---------------------------------------------------------------------------

enum State { READY, AT_SIMD, AT_BARRIER, DONE };

struct Thread {
    Context ctx;
    State st = READY;
    Meet *meet = nullptr;
    Site bar{};
    Ids ids{};
    u32 index = 0;
};

struct TgVar {
    const void *key;
    u64 size;
    char *mem;
};

struct Run {
    const KernelInfo *k = nullptr;
    const Launch *l = nullptr;
    std::vector<Thread> th;
    Context sched;
    Thread *cur = nullptr;
    char *tg0 = nullptr;
    std::vector<TgVar> vars;
    u64 tg_bytes = 0;
    u32 group[3] = {0, 0, 0};
    u64 rng = 0;
    // The first fault; the dispatch stops there.
    std::string err;
    u32 err_sg = ~0u;
    // A memory fault (SIGSEGV or SIGBUS) while the threadgroups run jumps
    // back to tinyllm_emu_dispatch.
    sigjmp_buf jump;
    volatile bool jumpable = false;
    const void *fault_addr = nullptr;
    int fault_sig = 0;
    u32 fault_thread = ~0u;
};

thread_local Run *g_run = nullptr;

u64 next_random(u64 &s) {
    s += 0x9e3779b97f4a7c15ull;
    u64 z = s;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

// 0..n in the launch's order.
void order(std::vector<u32> &v, u32 n, const Launch *l, u64 &rng) {
    v.resize(n);
    for (u32 i = 0; i < n; ++i) {
        v[i] = l->order == 1 ? n - 1 - i : i;
    }
    if (l->order == 2) {
        for (u32 i = n; i > 1; --i) {
            u32 j = (u32)(next_random(rng) % i);
            u32 t = v[i - 1];
            v[i - 1] = v[j];
            v[j] = t;
        }
    }
}

std::string format(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
std::string format(const char *fmt, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return buf;
}

std::string where(const Site &s) {
    return format("%s:%u", s.file ? s.file : "?", s.line);
}

bool same_site(const Site &a, const Site &b) {
    return a.line == b.line && a.col == b.col && strcmp(a.op, b.op) == 0 &&
           strcmp(a.file, b.file) == 0;
}

// "0-15, 17" for a sorted list of indices.
std::string ranges(const std::vector<u32> &v) {
    std::string s;
    for (size_t i = 0; i < v.size();) {
        size_t j = i;
        while (j + 1 < v.size() && v[j + 1] == v[j] + 1) {
            ++j;
        }
        if (!s.empty()) {
            s += ", ";
        }
        s += j == i ? format("%u", v[i]) : format("%u-%u", v[i], v[j]);
        i = j + 1;
    }
    return s;
}

// What thread t is doing, for messages.
std::string doing(const Thread &t) {
    switch (t.st) {
    case AT_SIMD:
        return format("wait at %s (%s:%u:%u)", t.meet->site.op, t.meet->site.file,
                      t.meet->site.line, t.meet->site.col);
    case AT_BARRIER:
        return format("wait at %s (%s:%u)", t.bar.op, t.bar.file, t.bar.line);
    case DONE:
        return "returned";
    case READY:
        break;
    }
    return "run";
}

// "lanes 0-15 wait at simd_sum (x.metal:7:9), lanes 16-31 returned": the
// threads [from, to) grouped by what they do.
std::string describe(const Run &r, u32 from, u32 to, const char *noun, u32 base) {
    std::vector<std::string> what;
    std::vector<std::vector<u32>> who;
    for (u32 i = from; i < to; ++i) {
        std::string d = doing(r.th[i]);
        size_t k = 0;
        while (k < what.size() && what[k] != d) {
            ++k;
        }
        if (k == what.size()) {
            what.push_back(d);
            who.emplace_back();
        }
        who[k].push_back(i - base);
    }
    std::string s;
    for (size_t k = 0; k < what.size(); ++k) {
        if (!s.empty()) {
            s += ", ";
        }
        s += format("%s %s %s", noun, ranges(who[k]).c_str(), what[k].c_str());
    }
    return s;
}

void fail(Run &r, std::string msg, u32 sg = ~0u) {
    if (r.err.empty()) {
        r.err = std::move(msg);
        r.err_sg = sg;
    }
}

// Dispatches running in this process (the signal handler reads the
// thread-local run only when some are).
std::atomic<int> g_running{0};
struct sigaction g_prev_segv;
struct sigaction g_prev_bus;

void on_fault(int sig, siginfo_t *info, void *uc) {
    if (g_running.load(std::memory_order_relaxed) > 0) {
        Run *r = g_run;
        if (r && r->jumpable) {
            r->jumpable = false;
            r->fault_addr = info->si_addr;
            r->fault_sig = sig;
            r->fault_thread = r->cur ? r->cur->index : ~0u;
            siglongjmp(r->jump, 1);
        }
    }
    // Not a kernel's: the handler that was there before (the Rust
    // runtime's stack-overflow report, Python's faulthandler, or the
    // default action, which the faulting instruction then meets again).
    const struct sigaction &prev = sig == SIGBUS ? g_prev_bus : g_prev_segv;
    if (prev.sa_flags & SA_SIGINFO) {
        if (prev.sa_sigaction) {
            prev.sa_sigaction(sig, info, uc);
        }
    } else if (prev.sa_handler == SIG_DFL) {
        signal(sig, SIG_DFL);
    } else if (prev.sa_handler != SIG_IGN) {
        prev.sa_handler(sig);
    }
}

bool install_fault_handler() {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &g_prev_segv);
    sigaction(SIGBUS, &sa, &g_prev_bus);
    return true;
}

void fiber_main(void *p) {
    Thread *t = (Thread *)p;
    Run *r = g_run;
    r->k->entry();
    t->st = DONE;
    switch_context(t->ctx, r->sched);
    abort();
}

inline void yield(Run &r, Thread &t) {
    switch_context(t.ctx, r.sched);
}

void *tg_alloc(u64 size, u64 align) {
    if (align < 64) {
        align = 64;
    }
    u64 bytes = (size + align - 1) / align * align;
    return aligned_alloc(align, bytes ? bytes : align);
}

// Runs threadgroup `g` (linear index); false on a fault (in r.err).
bool run_group(Run &r, u64 g, StackPool &stacks, std::vector<u32> &sg_order,
               std::vector<u32> &lane_order, std::vector<u32> &thread_order) {
    const Launch *l = r.l;
    const u32 *G = l->groups;
    const u32 *T = l->threads;
    r.group[0] = (u32)(g % G[0]);
    r.group[1] = (u32)((g / G[0]) % G[1]);
    r.group[2] = (u32)(g / ((u64)G[0] * G[1]));
    const u32 n = T[0] * T[1] * T[2];
    const u32 nsg = (n + SIMD - 1) / SIMD;

    if (l->poison) {
        if (r.tg0) {
            memset(r.tg0, 0xff, l->shared);
        }
        for (TgVar &v : r.vars) {
            memset(v.mem, 0xff, v.size);
        }
    }

    order(sg_order, nsg, l, r.rng);
    thread_order.clear();
    for (u32 s : sg_order) {
        u32 lanes = n - s * SIMD < SIMD ? n - s * SIMD : SIMD;
        order(lane_order, lanes, l, r.rng);
        for (u32 lane : lane_order) {
            thread_order.push_back(s * SIMD + lane);
        }
    }

    for (u32 i = 0; i < n; ++i) {
        Thread &t = r.th[i];
        t.st = READY;
        t.meet = nullptr;
        t.index = i;
        u32 p[3] = {i % T[0], (i / T[0]) % T[1], i / (T[0] * T[1])};
        for (int d = 0; d < 3; ++d) {
            t.ids.v[THREAD_POSITION_IN_GRID][d] = r.group[d] * T[d] + p[d];
            t.ids.v[THREAD_POSITION_IN_THREADGROUP][d] = p[d];
            t.ids.v[THREADGROUP_POSITION_IN_GRID][d] = r.group[d];
            t.ids.v[THREADS_PER_THREADGROUP][d] = T[d];
            t.ids.v[THREADGROUPS_PER_GRID][d] = G[d];
            t.ids.v[THREADS_PER_GRID][d] = G[d] * T[d];
        }
        t.ids.v[THREAD_INDEX_IN_THREADGROUP][0] = i;
        t.ids.v[THREAD_INDEX_IN_SIMDGROUP][0] = i % SIMD;
        t.ids.v[SIMDGROUP_INDEX_IN_THREADGROUP][0] = i / SIMD;
        t.ids.v[THREADS_PER_SIMDGROUP][0] = SIMD;
        t.ids.v[SIMDGROUPS_PER_THREADGROUP][0] = nsg;
        make_context(t.ctx, stacks.stack(i), STACK_BYTES, fiber_main, &t);
    }

    char cerr[512];
    for (;;) {
        // Each SIMD group in turn runs ahead as far as it can: its lanes run
        // to their next meeting point, and while they all meet at the same
        // SIMD-group function they go on, before any other group runs. So a
        // group reads threadgroup memory that another group has not written
        // yet unless a barrier stands between them, whatever SIMD-group
        // functions lie on the way.
        for (u32 s : sg_order) {
            u32 from = s * SIMD;
            u32 to = from + SIMD < n ? from + SIMD : n;
            for (;;) {
                for (u32 i : thread_order) {
                    if (i < from || i >= to) {
                        continue;
                    }
                    Thread &t = r.th[i];
                    if (t.st == READY) {
                        r.cur = &t;
                        switch_context(r.sched, t.ctx);
                        r.cur = nullptr;
                        if (!r.err.empty()) {
                            return false;
                        }
                    }
                }
                u32 at_simd = 0;
                u32 f = ~0u;
                bool same = true;
                for (u32 i = from; i < to; ++i) {
                    if (r.th[i].st == AT_SIMD) {
                        ++at_simd;
                        if (f == ~0u) {
                            f = i;
                        } else if (!same_site(r.th[i].meet->site, r.th[f].meet->site) ||
                                   r.th[i].meet->combine != r.th[f].meet->combine) {
                            same = false;
                        }
                    }
                }
                if (at_simd == 0) {
                    break;
                }
                const Site &site = r.th[f].meet->site;
                if (at_simd != to - from || !same) {
                    fail(r,
                         format("%s: lanes of a SIMD group diverge at %s: %s",
                                where(site).c_str(), site.op,
                                describe(r, from, to, "lanes", from).c_str()),
                         s);
                    return false;
                }
                Meet *lanes[SIMD] = {};
                for (u32 i = from; i < to; ++i) {
                    lanes[i - from] = r.th[i].meet;
                }
                cerr[0] = 0;
                if (const char *e = r.th[f].meet->combine(lanes, cerr, sizeof cerr)) {
                    fail(r, format("%s: %s: %s", where(site).c_str(), site.op, e), s);
                    return false;
                }
                for (u32 i = from; i < to; ++i) {
                    r.th[i].st = READY;
                }
            }
        }
        // Otherwise every thread waits at a barrier or returned.
        u32 at_barrier = 0;
        u32 f = ~0u;
        bool same = true;
        for (u32 i = 0; i < n; ++i) {
            if (r.th[i].st == AT_BARRIER) {
                ++at_barrier;
                if (f == ~0u) {
                    f = i;
                } else if (!same_site(r.th[i].bar, r.th[f].bar)) {
                    same = false;
                }
            }
        }
        if (at_barrier == 0) {
            return true;
        }
        if (at_barrier != n || !same) {
            fail(r, format("%s: threads of a threadgroup diverge at %s: %s",
                           where(r.th[f].bar).c_str(), r.th[f].bar.op,
                           describe(r, 0, n, "threads", 0).c_str()));
            return false;
        }
        for (u32 i = 0; i < n; ++i) {
            r.th[i].st = READY;
        }
    }
}

} // namespace

// ---------------------------------------------------------------------------
// The kernels' side
// ---------------------------------------------------------------------------

void tinyllm_emu_meet(Meet *m) {
    Run &r = *g_run;
    Thread &t = *r.cur;
    t.meet = m;
    t.st = AT_SIMD;
    yield(r, t);
}

void tinyllm_emu_barrier(const Site *site) {
    Run &r = *g_run;
    Thread &t = *r.cur;
    t.bar = *site;
    t.st = AT_BARRIER;
    yield(r, t);
}

const Ids *tinyllm_emu_ids() {
    return &g_run->cur->ids;
}

void *tinyllm_emu_arg(u32 kind, u32 index) {
    Run &r = *g_run;
    if (kind == BIND_BUFFER) {
        return index < r.l->nargs ? r.l->args[index] : nullptr;
    }
    return index == 0 ? r.tg0 : nullptr;
}

void *tinyllm_emu_tg_var(const void *key, u64 size, u64 align) {
    Run &r = *g_run;
    for (TgVar &v : r.vars) {
        if (v.key == key) {
            return v.mem;
        }
    }
    char *mem = (char *)tg_alloc(size, align);
    memset(mem, r.l->poison ? 0xff : 0, size);
    r.vars.push_back(TgVar{key, size, mem});
    r.tg_bytes += size;
    if (r.tg_bytes > THREADGROUP_LIMIT) {
        fail(r, format("the kernel's threadgroup memory (%llu bytes with [[threadgroup(0)]]) "
                       "exceeds the %llu bytes of Apple GPUs",
                       (unsigned long long)r.tg_bytes, (unsigned long long)THREADGROUP_LIMIT));
        // Park the thread: the scheduler stops at the fault.
        Thread &t = *r.cur;
        t.st = DONE;
        yield(r, t);
    }
    return mem;
}

// Runs one dispatch; returns 0, or 1 with the fault's message in err.
EXPORT int tinyllm_emu_dispatch(const KernelInfo *k, const Launch *l, char *err, u64 cap) {
    Run r;
    r.k = k;
    r.l = l;
    r.rng = l->seed;
    const u32 n = l->threads[0] * l->threads[1] * l->threads[2];
    const u64 groups = (u64)l->groups[0] * l->groups[1] * l->groups[2];
    if (n == 0 || groups == 0) {
        return 0;
    }
    StackPool &stacks = g_stacks;
    if (!stacks.reserve(n)) {
        snprintf(err, cap, "kernel %s: no memory for %u fiber stacks", k->name, n);
        return 1;
    }
    r.th.resize(n);
    if (l->shared) {
        r.tg0 = (char *)tg_alloc(l->shared, 64);
        memset(r.tg0, 0, l->shared);
        r.tg_bytes = l->shared;
    }
    static bool handler = install_fault_handler();
    (void)handler;
    // A fault on a fiber's guard page needs another stack to report from.
    constexpr size_t ALT_BYTES = 64 * 1024;
    stack_t old_alt;
    sigaltstack(nullptr, &old_alt);
    const bool own_alt = (old_alt.ss_flags & SS_DISABLE) != 0;
    if (own_alt) {
        if (!stacks.alt) {
            stacks.alt = (char *)malloc(ALT_BYTES);
        }
        stack_t alt;
        alt.ss_sp = stacks.alt;
        alt.ss_size = ALT_BYTES;
        alt.ss_flags = 0;
        sigaltstack(&alt, nullptr);
    }
    Run *outer = g_run;
    g_run = &r;
    g_running.fetch_add(1);

    std::vector<u32> sg_order, lane_order, thread_order;
    bool ok = true;
    if (sigsetjmp(r.jump, 1) != 0) {
        // A kernel thread (or a combine step) touched memory it must not.
        ok = false;
        if (stacks.in_guard(r.fault_addr)) {
            fail(r, format("thread %u overflowed its %zu KiB stack (too much private memory?)",
                           r.fault_thread, STACK_BYTES / 1024));
        } else {
            std::string who = r.fault_thread == ~0u
                                  ? std::string("in a SIMD-group operation")
                                  : format("in thread %u", r.fault_thread);
            fail(r, format("%s at address %p %s: an access outside a buffer? (each buffer of "
                           "the emulator is followed by a guard page)",
                           r.fault_sig == SIGBUS ? "bus error" : "invalid memory access",
                           r.fault_addr, who.c_str()));
        }
    } else if (r.tg_bytes > THREADGROUP_LIMIT) {
        fail(r, format("[[threadgroup(0)]] memory of %llu bytes exceeds the %llu bytes of "
                       "Apple GPUs",
                       (unsigned long long)r.tg_bytes, (unsigned long long)THREADGROUP_LIMIT));
        ok = false;
    } else if (l->order == 2) {
        // A shuffled order of threadgroups (at most 2^24 of them kept).
        std::vector<u32> perm;
        u64 m = groups < (1u << 24) ? groups : (1u << 24);
        order(perm, (u32)m, l, r.rng);
        r.jumpable = true;
        for (u64 i = 0; ok && i < groups; ++i) {
            u64 g = i < m ? perm[i] : i;
            ok = run_group(r, g, stacks, sg_order, lane_order, thread_order);
        }
    } else {
        r.jumpable = true;
        for (u64 i = 0; ok && i < groups; ++i) {
            u64 g = l->order == 1 ? groups - 1 - i : i;
            ok = run_group(r, g, stacks, sg_order, lane_order, thread_order);
        }
    }
    r.jumpable = false;
    g_running.fetch_sub(1);
    g_run = outer;
    if (own_alt) {
        stack_t off;
        off.ss_sp = nullptr;
        off.ss_size = 0;
        off.ss_flags = SS_DISABLE;
        sigaltstack(&off, nullptr);
    }
    for (TgVar &v : r.vars) {
        free(v.mem);
    }
    free(r.tg0);
    if (ok) {
        return 0;
    }
    std::string where = format("threadgroup (%u, %u, %u)", r.group[0], r.group[1], r.group[2]);
    if (r.err_sg != ~0u) {
        where += format(", SIMD group %u", r.err_sg);
    }
    snprintf(err, cap, "kernel %s (%s): %s", k->name, where.c_str(), r.err.c_str());
    return 1;
}
