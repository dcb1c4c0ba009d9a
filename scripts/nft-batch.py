#!/usr/bin/env python3
"""Print, annotated field by field, the nfnetlink batch that `nft -f SCRIPT` sends to the kernel.

Runs nft under strace in a fresh network namespace (`unshare -n`, so nothing existing is touched; needs root,
strace and nft). The output is the format of src/dataplane/nftables/netlink/testdata/*.hex: hex bytes, with
`#` comments. Usage: scripts/nft-batch.py SCRIPT.nft > out.hex
"""
import re, struct, subprocess, sys, tempfile

def capture(script):
    with tempfile.NamedTemporaryFile(suffix='.strace') as trace:
        subprocess.run(['unshare', '-n', 'strace', '-f', '-xx', '-s', '0', '-e', 'trace=sendmsg', '-e', 'write=all',
                        '-o', trace.name, 'nft', '-f', script], check=True)
        bufs = []
        cur = None
        for line in open(trace.name):
            if 'sendmsg(' in line:
                cur = bytearray()
                bufs.append(cur)
                continue
            m = re.match(r'^\s*(\d+\s+)?\| ([0-9a-f]{5})  (.{49})', line)
            if m and cur is not None:
                cur.extend(bytes.fromhex(m.group(3).replace(' ', '')))
    # The batch is the datagram that starts with NFNL_MSG_BATCH_BEGIN (0x10); the others read nft's cache.
    for b in bufs:
        if len(b) >= 6 and struct.unpack_from('<H', b, 4)[0] == 0x10:
            return bytes(b)
    sys.exit('no batch found')

MSG={0x10:'BATCH_BEGIN',0x11:'BATCH_END',0x0a00:'NEWTABLE',0x0a02:'DELTABLE',0x0a03:'NEWCHAIN',0x0a06:'NEWRULE',0x0a09:'NEWSET',0x0a0c:'NEWSETELEM',0x0a0e:'DELSETELEM'}
TOP={0x0a00:{1:'NAME',2:'FLAGS'},0x0a02:{1:'NAME'},0x0a03:{1:'TABLE',3:'NAME',4:'HOOK',5:'POLICY',7:'TYPE'},
 0x0a06:{1:'TABLE',2:'CHAIN',4:'EXPRESSIONS'},0x0a09:{1:'TABLE',2:'NAME',3:'FLAGS',4:'KEY_TYPE',5:'KEY_LEN',6:'DATA_TYPE',7:'DATA_LEN',10:'ID',11:'TIMEOUT (ms)',13:'USERDATA'},
 0x0a0c:{1:'TABLE',2:'SET',3:'ELEMENTS',4:'SET_ID'},0x0a0e:{1:'TABLE',2:'SET',3:'ELEMENTS'}}
EXPR={'payload':{1:'DREG',2:'BASE',3:'OFFSET',4:'LEN'},'meta':{1:'DREG',2:'KEY',3:'SREG'},'ct':{1:'DREG',2:'KEY'},
 'bitwise':{1:'SREG',2:'DREG',3:'LEN',4:'MASK',5:'XOR',6:'OP'},'cmp':{1:'SREG',2:'OP',3:'DATA'},'lookup':{1:'SET',2:'SREG',3:'DREG',4:'SET_ID',5:'FLAGS'},
 'immediate':{1:'DREG',2:'DATA'},'numgen':{1:'DREG',2:'MODULUS',3:'TYPE',4:'OFFSET'},'nat':{1:'TYPE',2:'FAMILY',3:'REG_ADDR_MIN',5:'REG_PROTO_MIN',7:'FLAGS'},
 'reject':{1:'TYPE',2:'ICMP_CODE'},'dynset':{1:'SET_NAME',2:'SET_ID',3:'OP',4:'SREG_KEY'},'masq':{1:'FLAGS'},'fib':{1:'DREG',2:'RESULT',3:'FLAGS'}}
DATA={1:'VALUE',2:'VERDICT'}
out=[]
def line(ind,hexs,comment): out.append('    '*0+'    '+'  '*ind+hexs+(' '*max(1,60-len(hexs)-2*ind)+'# '+comment if comment else ''))
def attrs(buf, ind, names, ctx):
    off=0
    while off+4<=len(buf):
        ln,ty=struct.unpack_from('<HH',buf,off); t=ty&0x3fff; nested=ty&0x8000
        d=buf[off+4:off+ln]; pad=buf[off+ln:off+((ln+3)&~3)]
        name=names.get(t,str(t)) if isinstance(names,dict) else names(t)
        hdr=buf[off:off+4].hex()
        if nested:
            line(ind,hdr,name+' {')
            sub={}
            if ctx=='exprs':
                n=[x for x in iter_attrs(d) if x[0]==1][0][1].rstrip(b'\0').decode()
                attrs(d,ind+1,{1:'NAME',2:'DATA'},('expr',n))
            elif isinstance(ctx,tuple) and ctx[0]=='expr' and t==2:
                attrs(d,ind+1,EXPR[ctx[1]],'data')
            elif name=='EXPRESSIONS': attrs(d,ind+1,lambda t:'expression',  'exprs')
            elif name=='ELEMENTS': attrs(d,ind+1,lambda t:f'element {t}','elem')
            elif ctx=='elem': attrs(d,ind+1,{1:'KEY',2:'DATA'},'keydata')
            elif ctx=='keydata' or ctx=='data': attrs(d,ind+1,DATA,'value')
            elif ctx=='value' and t==2: attrs(d,ind+1,{1:'CODE',2:'CHAIN'},'x')
            elif name=='HOOK': attrs(d,ind+1,{1:'HOOKNUM',2:'PRIORITY'},'x')
            else: attrs(d,ind+1,{},'x')
        elif name=='USERDATA':
            line(ind,hdr,'USERDATA: nft\'s TLVs (type, length, value) {')
            udata(d,ind+1,'top')
            if pad: line(ind+1,pad.hex(),'padding')
        else:
            txt=''
            if len(d)>1 and d[-1]==0 and all(32<=c<127 for c in d[:-1]): txt=' "'+d[:-1].decode()+'"'
            line(ind,hdr+' '+d.hex()+(' '+pad.hex() if pad else ''),name+txt)
        off+=(ln+3)&~3
UD={0:'key byte order (0 none, 1 host, 2 big-endian)',1:'data byte order',3:'key typeof {',4:'data typeof {',6:'data interval'}
EXPRS={1:'verdict',7:'payload',13:'concat',23:'numgen'}
def udata(b,ind,level,ctx=None):
    off=0; last=None
    while off+2<=len(b):
        t,l=b[off],b[off+1]; v=b[off+2:off+2+l]; whole=b[off:off+2+l].hex()
        if level=='top':
            if t in (3,4): line(ind,b[off:off+2].hex(),UD[t]); udata(v,ind+1,'typeof')
            else: line(ind,whole,UD.get(t,str(t))+f' = {int.from_bytes(v,"little")}')
        elif level=='typeof':
            if t==0:
                last=int.from_bytes(v,'little'); line(ind,whole,f'expression: {EXPRS.get(last,last)}')
            elif l==0: line(ind,whole,'no expression data')
            else:
                line(ind,b[off:off+2].hex(),'expression data {')
                udata(v,ind+1,'concat' if last==13 else ('numgen' if last==23 else 'payload'))
        elif level=='concat':
            line(ind,b[off:off+2].hex(),f'field {t} {{'); udata(v,ind+1,'typeof')
        else:
            names={'numgen':{0:'type (1 random)',1:'modulus',2:'offset'},'payload':{0:'protocol (6 udp, 8 tcp, 10 sctp, 12 ip, 13 ip6)',1:'header field (ip daddr 12, ip6 daddr 9, dport 2)'}}[level]
            line(ind,whole,names.get(t,str(t))+f' = {int.from_bytes(v,"little")}')
        off+=2+l
def iter_attrs(buf):
    off=0
    while off+4<=len(buf):
        ln,ty=struct.unpack_from('<HH',buf,off); yield (ty&0x3fff, buf[off+4:off+ln]); off+=(ln+3)&~3

def main():
    b = capture(sys.argv[1])
    off = 0
    while off + 16 <= len(b):
        ln, ty, fl, sq, pid = struct.unpack_from('<IHHII', b, off)
        line(0, b[off:off+16].hex(), f'{MSG.get(ty, hex(ty))}: len {ln}, flags {fl:#x}, seq {sq}')
        line(0, b[off+16:off+20].hex(), 'nfgenmsg: family, version, res_id (big-endian)')
        attrs(b[off+20:off+ln], 1, TOP.get(ty, {}), 'top')
        off += (ln + 3) & ~3
    print('\n'.join(o[4:] for o in out))

if __name__ == '__main__':
    main()
