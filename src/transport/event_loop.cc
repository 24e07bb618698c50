#include "transport/event_loop.h"

#include <sched.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <utility>

#include "core/clock.h"
#include "core/logging.h"

namespace tern::transport {
namespace {

constexpr int kMaxEventsPerWait = 256;
// Deferred tasks may defer more; after this many rounds the rest waits for the next
// iteration (which then does not block), so a task that keeps re-deferring itself
// cannot starve fds and timers.
constexpr int kMaxDeferredRounds = 8;

uint32_t ToEpoll(uint32_t events) {
  uint32_t e = 0;
  if (events & EventLoop::kReadable) e |= EPOLLIN | EPOLLRDHUP;
  if (events & EventLoop::kWritable) e |= EPOLLOUT;
  return e;
}

uint32_t FromEpoll(uint32_t e) {
  uint32_t events = 0;
  if (e & (EPOLLIN | EPOLLRDHUP | EPOLLPRI)) events |= EventLoop::kReadable;
  if (e & EPOLLOUT) events |= EventLoop::kWritable;
  if (e & (EPOLLERR | EPOLLHUP)) events |= EventLoop::kError;
  return events;
}

}  // namespace

Result<std::unique_ptr<EventLoop>> EventLoop::Create(const EventLoopOptions& options) {
  int ep = epoll_create1(EPOLL_CLOEXEC);
  if (ep < 0) return ErrnoError("epoll_create1", errno);
  int wake = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (wake < 0) {
    int err = errno;
    close(ep);
    return ErrnoError("eventfd", err);
  }
  std::unique_ptr<EventLoop> loop(new EventLoop(ep, wake, options));
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.ptr = loop->wake_entry_.get();
  if (epoll_ctl(ep, EPOLL_CTL_ADD, wake, &ev) != 0) {
    return ErrnoError("epoll_ctl(ADD eventfd)", errno);
  }
  return loop;
}

EventLoop::EventLoop(int epoll_fd, int wake_fd, const EventLoopOptions& options)
    : epoll_fd_(epoll_fd),
      wake_fd_(wake_fd),
      busy_poll_nanos_(options.busy_poll.count() > 0 ? options.busy_poll.count() : 0),
      now_nanos_(MonoNanos()),
      events_(new epoll_event[kMaxEventsPerWait]) {
  wake_entry_ = std::make_unique<FdEntry>();
  wake_entry_->fd = wake_fd;
  wake_entry_->cb = [this](uint32_t) { DrainPosted(); };
}

EventLoop::~EventLoop() {
  // Objects handed over for deletion may still unregister themselves.
  while (!graveyard_.empty()) {
    auto batch = std::move(graveyard_);
    graveyard_.clear();
  }
  deferred_.clear();
  close(epoll_fd_);
  close(wake_fd_);
}

bool EventLoop::IsInLoopThread() const {
  std::thread::id id = loop_thread_.load(std::memory_order_acquire);
  return id == std::thread::id() || id == std::this_thread::get_id();
}

void EventLoop::Wake() {
  uint64_t one = 1;
  ssize_t n = write(wake_fd_, &one, sizeof(one));
  (void)n;  // EAGAIN means the counter is already non-zero: the loop will wake.
}

void EventLoop::Stop() {
  stop_.store(true, std::memory_order_release);
  Wake();
}

void EventLoop::Post(std::function<void()> fn) {
  bool was_empty;
  {
    MutexLock lock(&mu_);
    was_empty = posted_.empty();
    posted_.push_back(std::move(fn));
  }
  if (was_empty) Wake();
}

void EventLoop::RunSync(const std::function<void()>& fn) {
  if (IsInLoopThread()) {
    fn();
    return;
  }
  Mutex mu;
  CondVar cv;
  bool done = false;
  Post([&] {
    fn();
    MutexLock lock(&mu);
    done = true;
    cv.SignalAll();
  });
  MutexLock lock(&mu);
  while (!done) cv.Wait(&mu);
}

void EventLoop::DrainPosted() {
  // Reset the eventfd before taking the queue: a Post() racing with us then either
  // lands in this batch or wakes us again.
  uint64_t count;
  ssize_t n = read(wake_fd_, &count, sizeof(count));
  (void)n;
  {
    MutexLock lock(&mu_);
    running_.swap(posted_);
  }
  for (auto& fn : running_) fn();
  running_.clear();
}

Status EventLoop::AddFd(int fd, uint32_t events, FdCallback cb) {
  DCHECK(IsInLoopThread());
  if (fd < 0) return InvalidArgumentError("EventLoop::AddFd: negative fd");
  if (static_cast<size_t>(fd) >= fds_.size()) fds_.resize(static_cast<size_t>(fd) + 1);
  if (fds_[fd] != nullptr) {
    return AlreadyExistsError("EventLoop::AddFd: fd " + std::to_string(fd) +
                              " is already registered");
  }
  auto entry = std::make_unique<FdEntry>();
  entry->fd = fd;
  entry->cb = std::move(cb);
  epoll_event ev{};
  ev.events = ToEpoll(events);
  ev.data.ptr = entry.get();
  if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev) != 0) {
    return ErrnoError("epoll_ctl(ADD)", errno);
  }
  fds_[fd] = std::move(entry);
  return Status::Ok();
}

Status EventLoop::ModifyFd(int fd, uint32_t events) {
  DCHECK(IsInLoopThread());
  if (fd < 0 || static_cast<size_t>(fd) >= fds_.size() || fds_[fd] == nullptr) {
    return NotFoundError("EventLoop::ModifyFd: fd " + std::to_string(fd) + " is not registered");
  }
  epoll_event ev{};
  ev.events = ToEpoll(events);
  ev.data.ptr = fds_[fd].get();
  if (epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, fd, &ev) != 0) {
    return ErrnoError("epoll_ctl(MOD)", errno);
  }
  return Status::Ok();
}

void EventLoop::RemoveFd(int fd) {
  DCHECK(IsInLoopThread());
  if (fd < 0 || static_cast<size_t>(fd) >= fds_.size() || fds_[fd] == nullptr) return;
  epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, fd, nullptr);
  fds_[fd]->removed = true;
  // The callback may be running right now (removing itself): free it later.
  removed_fds_.push_back(std::move(fds_[fd]));
}

EventLoop::TimerId EventLoop::RunAfter(std::chrono::nanoseconds delay, std::function<void()> fn) {
  DCHECK(IsInLoopThread());
  int64_t deadline = MonoNanos() + (delay.count() > 0 ? delay.count() : 0);
  TimerId id = next_timer_id_++;
  timers_.emplace(id, TimerSlot{deadline, std::move(fn)});
  timer_heap_.emplace(deadline, id);
  return id;
}

bool EventLoop::CancelTimer(TimerId id) {
  DCHECK(IsInLoopThread());
  if (timers_.erase(id) == 0) return false;
  // Cancelled entries stay in the heap until due; rebuild if they pile up.
  if (timer_heap_.size() > 64 && timer_heap_.size() > 2 * timers_.size()) {
    std::vector<HeapItem> live;
    live.reserve(timers_.size());
    for (const auto& [tid, slot] : timers_) live.emplace_back(slot.deadline, tid);
    timer_heap_ = decltype(timer_heap_)(std::greater<HeapItem>(), std::move(live));
  }
  return true;
}

void EventLoop::Defer(std::function<void()> fn) {
  DCHECK(IsInLoopThread());
  deferred_.push_back(std::move(fn));
}

int EventLoop::NextTimeoutMillis() {
  if (!deferred_.empty() || !graveyard_.empty()) return 0;
  while (!timer_heap_.empty() && timers_.count(timer_heap_.top().second) == 0) {
    timer_heap_.pop();  // cancelled
  }
  if (timer_heap_.empty()) return -1;
  int64_t wait = timer_heap_.top().first - MonoNanos();
  if (wait <= 0) return 0;
  int64_t ms = (wait + 999'999) / 1'000'000;
  return ms > 3'600'000 ? 3'600'000 : static_cast<int>(ms);
}

void EventLoop::RunDueTimers() {
  const int64_t now = MonoNanos();
  while (!timer_heap_.empty()) {
    const HeapItem top = timer_heap_.top();
    auto it = timers_.find(top.second);
    if (it == timers_.end()) {  // cancelled
      timer_heap_.pop();
      continue;
    }
    if (top.first > now) break;
    timer_heap_.pop();
    std::function<void()> fn = std::move(it->second.fn);
    timers_.erase(it);
    fn();
  }
}

void EventLoop::RunDeferred() {
  for (int round = 0; round < kMaxDeferredRounds && !deferred_.empty(); ++round) {
    std::vector<std::function<void()>> batch;
    batch.swap(deferred_);
    for (auto& fn : batch) fn();
    if (deferred_.empty()) {
      // Give the batch's capacity back so steady state allocates nothing.
      batch.clear();
      deferred_.swap(batch);
    }
  }
}

int EventLoop::Wait() {
  int timeout = NextTimeoutMillis();
  if (busy_poll_nanos_ > 0 && timeout != 0) {
    // Spin only while "hot": within busy_poll of the last iteration that had work.
    const int64_t spin_until = last_work_nanos_ + busy_poll_nanos_;
    uint32_t polls = 0;
    while (MonoNanos() < spin_until && !stop_.load(std::memory_order_relaxed)) {
      int n = epoll_wait(epoll_fd_, events_.get(), kMaxEventsPerWait, 0);
      if (n > 0) return n;
      // Let a thread that shares this vCPU (e.g. the worker whose reply we wait for)
      // run now rather than at the end of our timeslice.
      if ((++polls & 7) == 0) sched_yield();
    }
    timeout = NextTimeoutMillis();
  }
  int n = epoll_wait(epoll_fd_, events_.get(), kMaxEventsPerWait, timeout);
  if (n < 0) {
    if (errno != EINTR) TERN_LOG(ERROR) << "epoll_wait: " << ErrnoError("", errno);
    return 0;
  }
  return n;
}

void EventLoop::Run() {
  loop_thread_.store(std::this_thread::get_id(), std::memory_order_release);
  while (!stop_.load(std::memory_order_acquire)) {
    const int n = Wait();
    now_nanos_ = MonoNanos();
    if (n > 0) last_work_nanos_ = now_nanos_;
    for (int i = 0; i < n; ++i) {
      auto* entry = static_cast<FdEntry*>(events_[i].data.ptr);
      if (entry->removed) continue;
      entry->cb(FromEpoll(events_[i].events));
    }
    RunDueTimers();
    RunDeferred();
    removed_fds_.clear();
    while (!graveyard_.empty()) {
      auto batch = std::move(graveyard_);
      graveyard_.clear();
    }
  }
  RunDeferred();
  while (!graveyard_.empty()) {
    auto batch = std::move(graveyard_);
    graveyard_.clear();
  }
  removed_fds_.clear();
  loop_thread_.store(std::thread::id(), std::memory_order_release);
  stop_.store(false, std::memory_order_release);
}

Result<std::unique_ptr<EventLoopThread>> EventLoopThread::Create(const EventLoopOptions& options) {
  TERN_ASSIGN_OR_RETURN(std::unique_ptr<EventLoop> loop, EventLoop::Create(options));
  return std::unique_ptr<EventLoopThread>(new EventLoopThread(std::move(loop)));
}

EventLoopThread::~EventLoopThread() { Stop(); }

void EventLoopThread::Start() {
  if (thread_.joinable()) return;
  EventLoop* loop = loop_.get();
  thread_ = std::thread([loop] { loop->Run(); });
  // Wait until Run() has claimed the loop thread, so that RunSync() from here on
  // goes through the queue instead of running inline on the caller.
  Mutex mu;
  CondVar cv;
  bool running = false;
  loop->Post([&] {
    MutexLock lock(&mu);
    running = true;
    cv.SignalAll();
  });
  MutexLock lock(&mu);
  while (!running) cv.Wait(&mu);
}

void EventLoopThread::Stop() {
  if (!thread_.joinable()) return;
  loop_->Stop();
  thread_.join();
}

}  // namespace tern::transport
