#!/usr/bin/perl
# TCP helpers for scripts/dom0/bench.sh, in perl-base only (dom0 has no python):
# one process, non-blocking sockets, times from clock_gettime.
#
#   bench-tcp.pl server ECHO_PORT SIZED_PORT
#       ECHO_PORT:  echoes everything, half-closes after the client's FIN.
#       SIZED_PORT: reads one line "N\n", sends N bytes, closes.
#   bench-tcp.pl conc HOST PORT N SIZE TIMEOUT_S
#       N connections at once to an echo port, each sending its own SIZE+97*i bytes,
#       half-closing and checking every byte that comes back.
#       Prints "conc ok=K n=N ms=T" (+ one line per failure); exit 0 iff K == N.
#   bench-tcp.pl firstbyte HOST PORT T0_EPOCH_MS TIMEOUT_S
#       Until a byte arrives: connect (50 ms per try), send an HTTP/1.0 GET, wait for
#       the first byte of the answer. Prints "firstbyte ms=T tries=N late_ms=L" (T
#       from T0). Started ahead of T0 (perl alone takes up to ~2 s to start in a busy
#       dom0 under TCG), it waits for T0 before its first try; L is how much later
#       than T0 it could make that try (0: on time).
#   bench-tcp.pl get HOST PORT N [TIMEOUT_S]
#       Connect to a SIZED port, ask for N bytes, read to EOF.
#       Prints "get bytes=B ms=T" (T from before connect to EOF); exit 0 iff B == N.
use strict;
use warnings;
use Socket qw(:DEFAULT :crlf IPPROTO_TCP TCP_NODELAY);
use IO::Socket::INET;
use Errno qw(EINPROGRESS EAGAIN EWOULDBLOCK EINTR ECONNREFUSED);
use Fcntl qw(F_GETFL F_SETFL O_NONBLOCK);

# CLOCK_REALTIME / CLOCK_MONOTONIC in ms with µs precision (x86_64 syscall 228).
sub clock_ms {
    my ($id) = @_;
    my $ts = pack("q q", 0, 0);
    syscall(228, $id, $ts) == 0 or die "clock_gettime: $!";
    my ($s, $ns) = unpack("q q", $ts);
    return $s * 1000 + $ns / 1e6;
}
sub mono_ms { clock_ms(1) }
sub epoch_ms { clock_ms(0) }

sub nonblock {
    my ($fh) = @_;
    my $fl = fcntl($fh, F_GETFL, 0);
    fcntl($fh, F_SETFL, $fl | O_NONBLOCK) or die "fcntl: $!";
}

# A non-blocking connect in progress; returns the socket.
sub start_connect {
    my ($host, $port) = @_;
    socket(my $s, PF_INET, SOCK_STREAM, IPPROTO_TCP) or die "socket: $!";
    nonblock($s);
    setsockopt($s, IPPROTO_TCP, TCP_NODELAY, 1);
    my $addr = sockaddr_in($port, inet_aton($host) // die "bad host $host");
    if (!connect($s, $addr) && $! != EINPROGRESS) {
        return (undef, "$!");
    }
    return ($s, undef);
}

# The pattern stream for connection $i: deterministic, different per connection.
sub pattern {
    my ($i, $len) = @_;
    my $unit = sprintf("<%05d:%s>", $i, join("", map { chr(65 + ($i * 7 + $_) % 26) } 0 .. 20));
    my $s = $unit x (int($len / length($unit)) + 1);
    return substr($s, 0, $len);
}

my $mode = shift @ARGV // '';

if ($mode eq 'server') {
    my ($echo_port, $sized_port) = @ARGV;
    my %listen;
    for my $p ([$echo_port, 'echo'], [$sized_port, 'sized']) {
        my $l = IO::Socket::INET->new(LocalPort => $p->[0], Listen => 1024, ReuseAddr => 1, Proto => 'tcp')
            or die "listen $p->[0]: $!";
        nonblock($l);
        $listen{fileno($l)} = [$l, $p->[1]];
    }
    my $chunk = 'x' x 65536;
    my %c;    # fileno -> { fh, kind, out, eof, want, sent, inbuf }
    $SIG{PIPE} = 'IGNORE';
    while (1) {
        my ($rin, $win) = ('', '');
        vec($rin, $_, 1) = 1 for keys %listen;
        for my $fd (keys %c) {
            my $x = $c{$fd};
            vec($rin, $fd, 1) = 1 unless $x->{eof};
            vec($win, $fd, 1) = 1 if length($x->{out}) || (defined $x->{want} && $x->{sent} < $x->{want});
        }
        my $n = select(my $rout = $rin, my $wout = $win, undef, 1.0);
        next if $n <= 0;
        for my $fd (keys %listen) {
            next unless vec($rout, $fd, 1);
            while (my $a = $listen{$fd}[0]->accept) {
                nonblock($a);
                setsockopt($a, IPPROTO_TCP, TCP_NODELAY, 1);
                $c{fileno($a)} = { fh => $a, kind => $listen{$fd}[1], out => '', eof => 0, want => undef, sent => 0, inbuf => '' };
            }
        }
        for my $fd (keys %c) {
            my $x = $c{$fd} or next;
            my $close = 0;
            if (vec($rout, $fd, 1)) {
                my $r = sysread($x->{fh}, my $buf, 65536);
                if (!defined $r) {
                    $close = 1 unless $! == EAGAIN || $! == EINTR;
                } elsif ($r == 0) {
                    $x->{eof} = 1;
                    $close = 1 if $x->{kind} eq 'sized' && !defined $x->{want};
                } elsif ($x->{kind} eq 'echo') {
                    $x->{out} .= $buf;
                } elsif (!defined $x->{want}) {
                    $x->{inbuf} .= $buf;
                    if ($x->{inbuf} =~ /^(\d+)\r?\n/) { $x->{want} = $1; }
                }
            }
            if (!$close && vec($wout, $fd, 1)) {
                if (length $x->{out}) {
                    my $w = syswrite($x->{fh}, $x->{out});
                    if (defined $w) { substr($x->{out}, 0, $w, ''); }
                    elsif ($! != EAGAIN && $! != EINTR) { $close = 1; }
                } elsif (defined $x->{want} && $x->{sent} < $x->{want}) {
                    my $len = $x->{want} - $x->{sent};
                    $len = 65536 if $len > 65536;
                    my $w = syswrite($x->{fh}, $chunk, $len);
                    if (defined $w) { $x->{sent} += $w; }
                    elsif ($! != EAGAIN && $! != EINTR) { $close = 1; }
                }
            }
            if ($x->{kind} eq 'echo' && $x->{eof} && !length $x->{out}) { $close = 1; }
            if ($x->{kind} eq 'sized' && defined $x->{want} && $x->{sent} >= $x->{want}) { $close = 1; }
            if ($close) {
                shutdown($x->{fh}, 1);
                close($x->{fh});
                delete $c{$fd};
            }
        }
    }
}

if ($mode eq 'conc') {
    my ($host, $port, $n, $size, $timeout) = @ARGV;
    $SIG{PIPE} = 'IGNORE';
    my $t0 = mono_ms();
    my (%c, @fail);
    for my $i (1 .. $n) {
        my $data = pattern($i, $size + 97 * $i);
        my ($s, $err) = start_connect($host, $port);
        if (!$s) { push @fail, "conn $i: connect: $err"; next; }
        $c{fileno($s)} = { i => $i, fh => $s, data => $data, off => 0, got => '', wdone => 0 };
    }
    while (%c && mono_ms() - $t0 < $timeout * 1000) {
        my ($rin, $win) = ('', '');
        for my $fd (keys %c) {
            vec($rin, $fd, 1) = 1;
            vec($win, $fd, 1) = 1 unless $c{$fd}{wdone};
        }
        my $k = select(my $rout = $rin, my $wout = $win, undef, 0.5);
        next if $k <= 0;
        for my $fd (keys %c) {
            my $x = $c{$fd};
            if (vec($wout, $fd, 1) && !$x->{wdone}) {
                my $w = syswrite($x->{fh}, $x->{data}, 16384, $x->{off});
                if (defined $w) {
                    $x->{off} += $w;
                    if ($x->{off} >= length $x->{data}) { shutdown($x->{fh}, 1); $x->{wdone} = 1; }
                } elsif ($! != EAGAIN && $! != EINTR) {
                    push @fail, "conn $x->{i}: write after $x->{off} B: $!";
                    close($x->{fh}); delete $c{$fd}; next;
                }
            }
            if (vec($rout, $fd, 1)) {
                my $r = sysread($x->{fh}, my $buf, 65536);
                if (!defined $r) {
                    next if $! == EAGAIN || $! == EINTR;
                    push @fail, "conn $x->{i}: read after " . length($x->{got}) . " B: $!";
                    close($x->{fh}); delete $c{$fd};
                } elsif ($r == 0) {
                    push @fail, "conn $x->{i}: sent " . length($x->{data}) . " B, got " . length($x->{got}) . " B"
                        . (length($x->{got}) == length($x->{data}) ? " (content differs)" : "")
                        unless $x->{got} eq $x->{data};
                    close($x->{fh}); delete $c{$fd};
                } else {
                    $x->{got} .= $buf;
                }
            }
        }
    }
    for my $x (values %c) {
        push @fail, "conn $x->{i}: timed out (sent $x->{off} of " . length($x->{data}) . " B, got " . length($x->{got}) . " B)";
    }
    my $ok = $n - @fail;
    printf "conc ok=%d n=%d ms=%d\n", $ok, $n, mono_ms() - $t0;
    my $shown = 0;
    for (@fail) { print "  $_\n"; last if ++$shown >= 5; }
    exit($ok == $n ? 0 : 1);
}

if ($mode eq 'firstbyte') {
    my ($host, $port, $t0, $timeout) = @ARGV;
    $SIG{PIPE} = 'IGNORE';
    my $tries = 0;
    my $late = epoch_ms() - $t0;
    select(undef, undef, undef, -$late / 1000) if $late < 0;
    $late = 0 if $late < 0;
    my $deadline = epoch_ms() + $timeout * 1000;
    while (epoch_ms() < $deadline) {
        $tries++;
        my ($s, $err) = start_connect($host, $port);
        if (!$s) { select(undef, undef, undef, 0.01); next; }
        my $w = '';
        vec($w, fileno($s), 1) = 1;
        my $n = select(undef, my $wout = $w, undef, 0.05);
        if ($n <= 0) { close($s); next; }                               # no SYN-ACK yet
        my $e = unpack("i", getsockopt($s, SOL_SOCKET, SO_ERROR));
        if ($e) { close($s); select(undef, undef, undef, 0.01); next; } # refused, unreachable
        syswrite($s, "GET / HTTP/1.0\r\n\r\n");
        my $r = '';
        vec($r, fileno($s), 1) = 1;
        my $end = mono_ms() + 3000;
        while (mono_ms() < $end) {
            my $k = select(my $rout = $r, undef, undef, 0.1);
            next if $k <= 0;
            my $got = sysread($s, my $buf, 1);
            if ($got) {
                printf "firstbyte ms=%d tries=%d late_ms=%d\n", epoch_ms() - $t0, $tries, $late;
                exit 0;
            }
            last if defined $got || ($! != EAGAIN && $! != EINTR);   # EOF or reset: try again
        }
        close($s);
    }
    print "firstbyte ms=-1 tries=$tries late_ms=$late\n";
    exit 1;
}

if ($mode eq 'get') {
    my ($host, $port, $want, $timeout) = @ARGV;
    $timeout //= 60;
    my $t0 = mono_ms();
    my $s = IO::Socket::INET->new(PeerAddr => $host, PeerPort => $port, Proto => 'tcp', Timeout => $timeout)
        or do { print "get bytes=0 ms=-1 error=connect:$!\n"; exit 1 };
    setsockopt($s, IPPROTO_TCP, TCP_NODELAY, 1);
    syswrite($s, "$want\n");
    my $got = 0;
    my $r = '';
    vec($r, fileno($s), 1) = 1;
    while (mono_ms() - $t0 < $timeout * 1000) {
        my $k = select(my $rout = $r, undef, undef, 1.0);
        next if $k <= 0;
        my $n = sysread($s, my $buf, 262144);
        last if !$n;
        $got += $n;
    }
    printf "get bytes=%d ms=%.1f\n", $got, mono_ms() - $t0;
    exit($got == $want ? 0 : 1);
}

die "usage: bench-tcp.pl server|conc|firstbyte|get ... (see the top of the file)\n";
